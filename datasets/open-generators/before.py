"""The "before" figure: the shipped model on the val split's training copy, through the product's CLI.

    python3 datasets/open-generators/before.py link    # val copy as DIR/REAL, DIR/FAKE (hard links)
    PYTHONPATH=. nice -n 10 python3 -c 'from audit.cli import main; main()' scan DIR --labels folders \
        --out /work/data/open-generators/before-scan --no-report --store /work/data/open-generators/before-store.db
    python3 datasets/open-generators/before.py table   # per repository, generator, family (markdown)

ROC AUC from prob_ai; "caught" is the share of AI images whose verdict is ai-generated, "flagged"
the share of real photos with that verdict (the model's own threshold).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from training.sources import source_table  # noqa: E402


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def link(args: argparse.Namespace) -> None:
    target = Path(args.dir)
    count = 0
    for row in read_tsv(Path(args.manifest)):
        if row["split"] != "val":
            continue
        source = Path(args.copy) / row["file"]
        destination = target / row["label"] / Path(row["file"]).name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if not destination.exists():
            os.link(source, destination)
        count += 1
    print(f"{count} val files linked under {target}/REAL and {target}/FAKE")


def table(args: argparse.Namespace) -> None:
    rows = {Path(r["file"]).name: r for r in read_tsv(Path(args.manifest)) if r["split"] == "val"}
    with open(Path(args.scan) / "results.csv", newline="", encoding="utf-8-sig") as handle:  # the CSV starts with a BOM
        results = [r for r in csv.DictReader(handle) if r["status"] == "ok"]
    names, probs, labels, flagged = [], [], [], []
    for result in results:
        row = rows.get(Path(result["path"]).name)
        if row is None:
            continue
        names.append(row)
        probs.append(float(result["prob_ai"]))
        labels.append(1 if row["label"] == "FAKE" else 0)
        flagged.append(result["verdict"] == "ai-generated")
    probs_a, labels_a, flagged_a = np.array(probs), np.array(labels), np.array(flagged)
    threshold = float(results[0]["threshold"]) if results else 0.5
    out = [f"Scored {len(names)} val images ({int(labels_a.sum())} AI, {int((1 - labels_a).sum())} real); "
           f"model threshold {threshold:.4f}.", ""]

    def section(title: str, key) -> list[tuple[str, float | None]]:
        keys = [key(r) for r in names]
        stats = {s["source"]: s for s in source_table(probs_a, labels_a, keys, threshold)}
        groups = defaultdict(list)
        for index, k in enumerate(keys):
            groups[k].append(index)
        out.extend([f"#### {title}", "", "| set | images | AI | real | ROC AUC | AI caught | real flagged |",
                    "|---|---:|---:|---:|---:|---:|---:|"])
        aucs = []
        for k in sorted(groups):
            idx = np.array(groups[k])
            ai, real = idx[labels_a[idx] == 1], idx[labels_a[idx] == 0]
            caught = f"{flagged_a[ai].mean():.1%}" if len(ai) else ""
            fp = f"{flagged_a[real].mean():.1%}" if len(real) else ""
            auc = stats[k]["roc_auc"]
            aucs.append((k, auc))
            out.append(f"| {k} | {len(idx)} | {len(ai)} | {len(real)} | {'' if auc is None else f'{auc:.3f}'} | {caught} | {fp} |")
        out.append("")
        return aucs

    everything = section("All val images", lambda r: "all")
    # A repository, generator or family holds one label: its AUC is taken against all real photos of val.
    real_index = [i for i, r in enumerate(names) if r["label"] == "REAL"]

    def against_reals(title: str, key) -> None:
        groups = defaultdict(list)
        for index, r in enumerate(names):
            groups[key(r)].append(index)
        out.extend([f"#### {title}", "", "(AI groups: ROC AUC against all val real photos; real groups: against all val AI images)", "",
                    "| key | label | images | ROC AUC | AI caught / real flagged |", "|---|---|---:|---:|---:|"])
        macro, macro10 = [], []
        for k in sorted(groups):
            idx = np.array(groups[k])
            label = "FAKE" if labels_a[idx[0]] == 1 else "REAL"
            other = np.array(real_index) if label == "FAKE" else np.array([i for i in range(len(names)) if labels_a[i] == 1])
            both = np.concatenate([idx, other])
            auc = source_table(probs_a[both], labels_a[both], ["k"] * len(both), threshold)[0]["roc_auc"]
            rate = flagged_a[idx].mean()
            out.append(f"| {k} | {label} | {len(idx)} | {'' if auc is None else f'{auc:.3f}'} | {rate:.1%} |")
            if label == "FAKE" and auc is not None:
                macro.append(auc)
                if len(idx) >= 10:
                    macro10.append(auc)
        out.append("")
        if title.startswith("Per family"):
            out.append(f"**Macro mean ROC AUC over the {len(macro)} AI families: {np.mean(macro):.3f}** "
                       f"(over the {len(macro10)} families with 10 or more images: {np.mean(macro10):.3f})")
            out.append("")

    against_reals("Per family", lambda r: r["family"] if r["label"] == "FAKE" else f"photo: {r['generator']}")
    against_reals("Per source repository", lambda r: r["source_repo"])
    against_reals("Per generator (or kind of real photo)", lambda r: r["generator"])
    text = "\n".join(out)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"(pooled AUC {everything[0][1]})", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["link", "table"])
    parser.add_argument("--manifest", default=str(HERE / "MANIFEST.tsv"))
    parser.add_argument("--copy", default="/work/data/open-generators/train-copy")
    parser.add_argument("--dir", default="/work/data/open-generators/before-val")
    parser.add_argument("--scan", default="/work/data/open-generators/before-scan")
    parser.add_argument("--out", default="/work/data/open-generators/before-table.md")
    args = parser.parse_args()
    {"link": link, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
