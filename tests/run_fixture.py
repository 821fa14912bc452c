"""A small finished run folder, written directly in the documented format (results.csv with a
BOM and neutralised cells, summary.json), with real image files and a real tiny model, so the
report tests depend neither on the scan's timing nor on the default model."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import synthetic_detector as sd

COLUMNS = (
    "path", "root", "sha256", "bytes", "format", "width", "height", "status", "error", "prob_ai",
    "verdict", "threshold", "true_label", "model_id", "scanned_at", "note", "evidence", "evidence_source",
)
XSS_NAME = "<img src=x onerror=alert(1)>.jpg"
FORMULA_NAME = "=cmd.png"
EXTERNAL_URL = "http://example.com/x.png"


@dataclass
class FixtureRun:
    run_dir: Path
    archive: Path
    model_path: Path
    rows: list[dict[str, str]]


def neutralise(text: str) -> str:
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


def make_images(archive: Path, count: int, seed: int = 7) -> list[tuple[Path, str]]:
    """(file, true label) pairs: REAL/ and FAKE/ folders of synthetic PNG/JPEG images."""
    rng = np.random.default_rng(seed)
    made = []
    for index in range(count):
        label = "ai-generated" if index % 2 else "real"
        image = sd.background(rng)
        if label == "ai-generated":
            image = sd.with_patch(image, int(rng.integers(4)), int(rng.integers(4)))
        folder = archive / ("FAKE" if label == "ai-generated" else "REAL")
        made.append((sd.write_png(folder / f"img{index:03d}.png", image), label))
    return made


def write_run(run_dir: Path, archive: Path, model_path: Path, files: list[tuple[Path, str]],
              errors: list[tuple[str, str]], evidence: dict[str, str] | None = None,
              threshold: float = 0.5) -> list[dict[str, str]]:
    """Score the files with the model (so prob_ai is what the model says) and write the run."""
    import torch
    from PIL import Image

    from audit.model import load_model, to_model_input

    model = load_model(model_path)
    evidence = evidence or {}
    rows = []
    for path, label in files:
        with Image.open(path) as opened:
            rgb = opened.convert("RGB")
        batch = torch.stack([to_model_input(rgb, model.card.preprocessing)])
        from audit.model import normalize
        with torch.no_grad():
            prob_ai = float(model.probabilities(model.network(normalize(batch, model.card.preprocessing)))[0])
        data = path.read_bytes()
        rel = path.relative_to(archive).as_posix()
        rows.append({
            "path": rel, "root": str(archive), "sha256": hashlib.sha256(data).hexdigest(), "bytes": str(len(data)),
            "format": "PNG", "width": str(rgb.width), "height": str(rgb.height), "status": "ok", "error": "",
            "prob_ai": f"{prob_ai:.6f}", "verdict": "ai-generated" if prob_ai >= threshold else "real",
            "threshold": f"{threshold:.6f}", "true_label": label, "model_id": model.model_id,
            "scanned_at": "2026-11-25T19:00:00Z", "note": "",
            "evidence": evidence.get(rel, ""), "evidence_source": "xmp" if rel in evidence else "",
        })
    for rel, error in errors:
        rows.append({
            "path": rel, "root": str(archive), "sha256": "", "bytes": "0", "format": "", "width": "", "height": "",
            "status": "error", "error": error, "prob_ai": "", "verdict": "error", "threshold": f"{threshold:.6f}",
            "true_label": "", "model_id": model.model_id, "scanned_at": "2026-11-25T19:00:00Z", "note": "",
            "evidence": "", "evidence_source": "",
        })
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "results.csv", "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([neutralise(row[c]) for c in COLUMNS])
    counts = {"ai-generated": 0, "real": 0, "error": 0}
    for row in rows:
        counts[row["verdict"]] += 1
    summary = {
        "tool": {"name": "ai-image-audit", "version": "0.1.0"},
        "started_at": "2026-11-25T19:00:00Z", "finished_at": "2026-11-25T19:00:05Z", "exit_code": 3,
        "files": len(rows),
        "counts": {"by_status": {"ok": len(files), "error": len(errors)}, "by_verdict": counts},
        "flagged": counts["ai-generated"],
        "model": {"id": model.model_id, "name": model.card.name, "sha256": model.card.weights_sha256,
                  "path": str(model.weights_path), "variant": model.card.variant,
                  "temperature": model.card.temperature, "threshold": threshold,
                  "threshold_method": model.card.threshold_method},
        "threshold": threshold,
        "options": {"archives": [str(archive)], "labels": "folders", "batch_size": 256, "device": "auto"},
        "cwd": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return rows
