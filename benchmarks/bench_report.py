"""Benchmark the report stage: Grad-CAM of 200 flagged images plus the complete HTML/PDF render.

Target (issue 4): Grad-CAM for 200 flagged images and the complete PDF render together take no
more than 60 s on this CPU. Run by hand, from the repository root:

    .venv/bin/python benchmarks/bench_report.py                      # CIFAKE sample, default model
    .venv/bin/python benchmarks/bench_report.py --model PATH.json    # another model
    .venv/bin/python benchmarks/bench_report.py --photos             # 200 flagged 12 MP JPEGs
    .venv/bin/python benchmarks/bench_report.py --memory-images 5000 # RSS over a long Grad-CAM stream

The run folder is written with the record stage's own writer (audit.pipeline._outputs), so the report
reads exactly what a scan writes; nothing is scored by the scan. Without a trained model the
benchmark uses an untrained resnet18-s1stem: Grad-CAM costs the same whatever the weights.
Images: the bundled examples/cifake-sample (32x32 PNGs, the model's own domain), or with
--photos 12 MP JPEGs made here (decode cost dominates; draft decoding keeps it down).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from audit.model import DEFAULT_MODEL_PATH, ModelCard, build_network, load_model, save_model  # noqa: E402
from audit.pipeline import ResultWriter, commit, write_json_tmp
from audit.report import render_report_files  # noqa: E402
from audit.rows import ResultRow  # noqa: E402
from audit.summary import ModelRecord, RunSummary, ToolRecord  # noqa: E402 - after the path

SAMPLE = REPO / "examples" / "cifake-sample"


def model_for_benchmark(given: str | None, workdir: Path) -> Path:
    if given:
        return Path(given)
    if DEFAULT_MODEL_PATH.is_file():
        return DEFAULT_MODEL_PATH
    torch.manual_seed(0)
    card = ModelCard(name="untrained-benchmark-model", notes=["untrained: for timing only"])
    save_model(build_network(card.variant), card, workdir / "model" / "untrained", dtype=torch.float32)
    print("note: no trained default model yet; using an untrained resnet18-s1stem (same Grad-CAM cost)")
    return workdir / "model" / "untrained.json"


Item = tuple[Path, Path, str]  # (file, its archive root, true label)


def sample_images(count: int) -> list[Item]:
    files = sorted(SAMPLE.rglob("*.png")) + sorted(SAMPLE.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"no images under {SAMPLE}")
    picked = [files[i % len(files)] for i in range(count)]
    return [(path, SAMPLE, "ai-generated" if path.parent.name == "FAKE" else "real") for path in picked]


def make_photos(root: Path, count: int, megapixels: float = 12.0) -> list[Item]:
    """Distinct 4000x3000 JPEGs (smooth colour fields plus noise, like photo content)."""
    folder = root / "FAKE"
    folder.mkdir(parents=True, exist_ok=True)
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    rng = np.random.default_rng(0)
    made = []
    for index in range(count):
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        path = folder / f"photo{index:03d}.jpg"
        picture.save(path, quality=88)
        made.append((path, root, "ai-generated"))
    return made


def write_run(run_dir: Path, flagged: list[Item], unflagged: list[Item], model_path: Path) -> None:
    """results.csv (+ summary.json) with the given files flagged, through the record stage."""
    model = load_model(model_path)
    rng = np.random.default_rng(1)
    writer = ResultWriter(run_dir, write_xlsx=False)
    rows = [(*item, float(rng.uniform(0.5, 1.0))) for item in flagged]
    rows += [(*item, float(rng.uniform(0.0, 0.5))) for item in unflagged]
    for path, root, label, prob_ai in rows:
        data = path.read_bytes()
        with Image.open(path) as image:
            width, height, image_format = image.width, image.height, image.format
        writer.write(ResultRow(
            path=path.relative_to(root).as_posix(), root=str(root), sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data), format=image_format, width=width, height=height, prob_ai=prob_ai,
            verdict="ai-generated" if prob_ai >= 0.5 else "real", threshold=0.5, true_label=label,
            model_id=model.model_id, scanned_at="2026-11-25T00:00:00Z",
        ))
    renames = writer.finish()
    summary = RunSummary(
        tool=ToolRecord("ai-image-audit", "benchmark"), started_at="2026-11-25T00:00:00Z",
        finished_at="2026-11-25T00:00:00Z", files=len(rows),
        model=ModelRecord(model.model_id, model.card.name, model.card.weights_sha256, str(model.weights_path.resolve())),
        threshold=0.5, options={"archives": sorted({str(r) for _, r, _, _ in rows}), "labels": "folders"},
        cwd=os.getcwd(),
    )
    renames.append(write_json_tmp(run_dir / "summary.json", summary.to_json()))
    commit(renames)


def pdf_pages(pdf: Path) -> str:
    try:
        info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return next((line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")), "?")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_over_many_images(model_path: Path, count: int) -> None:
    """Explain ``count`` images in one stream and print the RSS as it goes: it must stay flat."""
    from audit.report import GradCamExplainer

    model = load_model(model_path)
    paths = [path for path, _, _ in sample_images(count)]
    checkpoints = {max(1, count // 10) * k for k in range(1, 11)}
    started = time.perf_counter()
    readings = []
    with GradCamExplainer(model) as explainer:
        for done, result in enumerate(explainer.explain_paths(paths), start=1):
            del result  # as the report does: written to disk, then dropped
            if done in checkpoints:
                readings.append((done, round(current_rss_mb(), 1)))
    seconds = time.perf_counter() - started
    print(json.dumps({"images": count, "seconds": round(seconds, 2), "images_per_s": round(count / seconds, 1),
                      "rss_mb_after_n_images": readings}))
    growth = readings[-1][1] - readings[0][1]
    print(f"RSS from {readings[0][0]} to {readings[-1][0]} images: {growth:+.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model card (default: the installed default model, else an untrained one)")
    parser.add_argument("--flagged", type=int, default=200, help="flagged images in the gallery (default 200)")
    parser.add_argument("--unflagged", type=int, default=800, help="further rows judged real (default 800)")
    parser.add_argument("--photos", action="store_true", help="flag 12 MP JPEGs instead of the CIFAKE sample")
    parser.add_argument("--keep", type=Path, help="write the run here and keep it (default: a temporary folder)")
    parser.add_argument("--memory-images", type=int, default=0,
                        help="instead: explain N images in one stream and report the RSS along the way")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-report-") as temporary:
        workdir = args.keep or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        model_path = model_for_benchmark(args.model, workdir)
        if args.memory_images:
            memory_over_many_images(model_path, args.memory_images)
            return
        if args.photos:
            flagged = make_photos(workdir / "photos", args.flagged)
            unflagged = sample_images(args.unflagged)  # only feed the table and charts
        else:
            every = sample_images(args.flagged + args.unflagged)
            flagged, unflagged = every[: args.flagged], every[args.flagged:]
        run_dir = workdir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run(run_dir, flagged, unflagged, model_path)

        started = time.perf_counter()
        rendered = render_report_files(run_dir, max_gallery=args.flagged)
        wall = time.perf_counter() - started

        figures = {
            "images_flagged": len(flagged),
            "rows": len(flagged) + len(unflagged),
            "image_source": "12 MP JPEG" if args.photos else "CIFAKE sample 32x32 PNG",
            "seconds": rendered.seconds,
            "seconds_gradcam_plus_render": round(wall, 2),
            "target_seconds": 60,
            "pdf_pages": pdf_pages(rendered.pdf_path),
            "pdf_bytes": rendered.pdf_path.stat().st_size,
            "html_bytes": rendered.html_path.stat().st_size,
            "heatmaps_bytes": folder_bytes(run_dir / "heatmaps"),
            "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        }
        print(json.dumps(figures, indent=2))
        verdict = "meets" if wall <= 60 else "MISSES"
        print(f"Grad-CAM of {len(flagged)} flagged images + HTML + PDF: {wall:.1f} s ({verdict} the 60 s target)")


if __name__ == "__main__":
    main()
