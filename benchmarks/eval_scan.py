"""Measure a model through `audit scan` on a labelled folder (REAL/ and FAKE/ inside), as users see it.

    python benchmarks/eval_scan.py DATA --model MODEL [--manifest TSV] [--out DIR]

Prints the ROC AUC, the share of real images flagged ai-generated, of AI images caught as
ai-generated, caught or sent to a person as uncertain, the uncertain rate, and the share of
wrong verdicts (at the row's threshold) that became uncertain instead; with a manifest
(columns file, generator and optionally family), the same per generator and per family.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score


def figures(rows: list[dict[str, str]]) -> dict[str, float | int | None]:
    ok = [r for r in rows if r["status"] == "ok"]
    labels = np.array([r["true_label"] == "ai-generated" for r in ok])
    probs = np.array([float(r["prob_ai"]) for r in ok])
    would_flag = np.array([float(r["prob_ai"]) >= float(r["threshold"]) for r in ok])
    verdict = np.array([r["verdict"] for r in ok])
    wrong = would_flag != labels
    real, ai = ~labels, labels

    def share(mask: np.ndarray, of: np.ndarray) -> float | None:
        return round(float(mask[of].mean()), 4) if of.any() else None

    return {
        "images": len(ok),
        "errors": len(rows) - len(ok),
        "roc_auc": round(float(roc_auc_score(labels, probs)), 4) if 0 < labels.sum() < len(labels) else None,
        "accuracy_at_threshold": round(float((would_flag == labels).mean()), 4) if len(ok) else None,
        "real_flagged": share(verdict == "ai-generated", real),
        "ai_caught": share(verdict == "ai-generated", ai),
        "ai_caught_or_uncertain": share(np.isin(verdict, ["ai-generated", "uncertain"]), ai),
        "uncertain_rate": round(float((verdict == "uncertain").mean()), 4) if len(ok) else None,
        "wrong_at_threshold": int(wrong.sum()),
        "wrong_sent_to_uncertain": share(verdict == "uncertain", wrong),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", type=Path, default=None, help="TSV with columns file, generator[, family]")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more audit scan options")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="eval-scan-"))
    command = [sys.executable, "-m", "audit.cli", "scan", str(args.data), "--model", args.model, "--labels", "folders",
               "--out", str(out), "--no-report", "--no-xlsx", "--full", "--store", str(out / "store.sqlite"), "--quiet",
               *args.extra]
    subprocess.run(command, check=False)
    with open(out / "results.csv", newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    report: dict[str, object] = {"command": " ".join(command), "all": figures(rows),
                                 "seconds": summary.get("seconds")}
    if args.manifest:
        by_name: dict[str, dict[str, str]] = {}
        with open(args.manifest, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                by_name[Path(row["file"]).name] = row
        reals = [row for row in rows if row["true_label"] == "real"]
        for key in ("generator", "family"):
            groups: dict[str, list[dict[str, str]]] = defaultdict(list)
            for row in rows:
                meta = by_name.get(Path(row["path"]).name)
                if meta and meta.get(key):
                    groups[f"{'AI' if row['true_label'] == 'ai-generated' else 'real'}: {meta[key]}"].append(row)
            # An AI group's AUC is against every real image of the set: can the group be told from photos?
            table = {name: figures(group + reals if name.startswith("AI: ") else group)
                     for name, group in sorted(groups.items())}
            for name, group in groups.items():
                table[name]["images_in_group"] = len(group)
            aucs = [v["roc_auc"] for name, v in table.items() if name.startswith("AI: ") and v["roc_auc"] is not None]
            report[f"per_{key}"] = table
            report[f"macro_auc_over_{key}"] = round(float(np.mean(aucs)), 4) if aucs else None
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
