"""Tables for the data card from MANIFEST.tsv (and build.py's removed.tsv): `python3 stats.py > tables.md`."""

from __future__ import annotations

import csv
import sys
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def main() -> None:
    manifest = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "MANIFEST.tsv"
    removed = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/work/data/open-generators/work/removed.tsv")
    rows = read_tsv(manifest)
    out = []
    split_label = Counter((r["split"], r["label"]) for r in rows)
    out += ["### Counts per split and label", "", "| split | REAL | FAKE | all |", "|---|---:|---:|---:|"]
    for split in ("train", "val"):
        real, fake = split_label[(split, "REAL")], split_label[(split, "FAKE")]
        out.append(f"| {split} | {real:,} | {fake:,} | {real + fake:,} |")
    out.append(f"| all | {sum(v for (s, l), v in split_label.items() if l == 'REAL'):,} | "
               f"{sum(v for (s, l), v in split_label.items() if l == 'FAKE'):,} | {len(rows):,} |")
    use = Counter((r["label"], r["use"]) for r in rows)
    out += ["", "| label | use=train | use=eval-only |", "|---|---:|---:|"]
    for label in ("REAL", "FAKE"):
        out.append(f"| {label} | {use[(label, 'train')]:,} | {use[(label, 'eval-only')]:,} |")
    fakes = [r for r in rows if r["label"] == "FAKE"]
    generators = {(r["generator"], r["family"], r["year"]) for r in fakes}
    names = {g for g, _, _ in generators}
    recent = {g for g, _, y in generators if y and int(y) >= 2024}
    families = {r["family"] for r in fakes}
    out += ["", f"{len(names)} generators or generator versions in {len(families)} families; {len(recent)} of them from 2024 or later.", ""]
    # generators by year
    by_gen = defaultdict(Counter)
    for r in fakes:
        by_gen[(r["year"] or "?", r["family"], r["generator"])][r["split"]] += 1
    out += ["### Generators by year", "", "| year | family | generator | images | split |", "|---|---|---|---:|---|"]
    for (year, family, generator), counts in sorted(by_gen.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        splits = "+".join(s for s in ("train", "val") if counts[s])
        out.append(f"| {year} | {family} | {generator} | {sum(counts.values())} | {splits} |")
    # sources
    by_repo = defaultdict(Counter)
    meta = {}
    for r in rows:
        by_repo[r["source_repo"]][r["label"]] += 1
        meta[r["source_repo"]] = (r["split"], r["licence"], r["use"])
    out += ["", "### Sources", "", "| repository | split | licence | use | REAL | FAKE |", "|---|---|---|---|---:|---:|"]
    for repo in sorted(by_repo, key=str.lower):
        split, licence, use_ = meta[repo]
        out.append(f"| {repo} | {split} | {licence} | {use_} | {by_repo[repo]['REAL'] or ''} | {by_repo[repo]['FAKE'] or ''} |")
    # real kinds
    kinds = defaultdict(Counter)
    for r in rows:
        if r["label"] == "REAL":
            kinds[r["generator"]][r["split"]] += 1
    out += ["", "### Real-photo kinds", "", "| kind | train | val |", "|---|---:|---:|"]
    for kind in sorted(kinds):
        out.append(f"| {kind} | {kinds[kind]['train']} | {kinds[kind]['val']} |")
    # families per split
    fam = defaultdict(Counter)
    for r in fakes:
        fam[r["family"]][r["split"]] += 1
    only_val = sorted(f for f, c in fam.items() if c["val"] and not c["train"])
    out += ["", f"AI families only in val (train lacks them): {', '.join(only_val) or 'none'}.", ""]
    if removed.exists():
        out += ["### Left out by the build", "", "| rule | files |", "|---|---:|"]
        for r in read_tsv(removed):
            out.append(f"| {r['rule']} | {int(r['count']):,} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
