"""Benchmark four nights of `audit scan` over an archive of N files. Run by hand (it is not a test).

The archive is made of hard links to the images of --data (the CIFAKE test split: 20,000 files),
N of them, spread over two roots (A and B, half each), so that one root can go missing. Then four
`audit scan A B` processes on one run store, report on:

1. first: every file is new (each distinct image is scored once; the links repeat its bytes);
2. unchanged: nothing changed since night 1;
3. changed: 1% new files (new bytes) and 1% changed files (new bytes under the old name);
4. root missing: B is an empty folder (an unmounted disk's mount point); the run must stop.

For each night it prints the wall time, the exit code, every stage's seconds (summary.json's
discover, store_lookup, load_and_score, csv, xlsx, store_commit; the report's from the last results
file's modification time to the last report file's), the peak RSS (the largest process of the run: wait4's
ru_maxrss, which includes the decode workers and the report process), the sizes of the run store,
summary.json and report.html, and the CSV and XLSX row counts against the files found.

    unzip -q /work/shared/data/cifake.zip 'test/*' -d /work/data/cifake-test
    nice -n 5 python3 benchmarks/bench_scale.py --data /work/data/cifake-test/test --files 100000 \\
        --work /work/data/scale-100k --keep

With --keep and the same --work, the archive and the store stay, and --nights picks nights to run
again (e.g. --nights unchanged,changed after a first night already ran: the changed night's
changes are made again, on top of the earlier ones).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NIGHTS = ("first", "unchanged", "changed", "root-missing")
FILES_PER_FOLDER = 1000


def source_images(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg", ".png"))


def build_archive(data: Path, roots: tuple[Path, Path], files: int) -> None:
    """roots[0] and roots[1] hold files/2 hard links each to the images of ``data``, in folders of
    FILES_PER_FOLDER; kept when a marker says they were made for this count."""
    marker = roots[0].parent / f"built-{files}"
    if marker.exists():
        return
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)
    sources = source_images(data)
    if not sources:
        raise SystemExit(f"no images under {data}")
    half = files // 2
    for index in range(files):
        root = roots[0] if index < half else roots[1]
        local = index if index < half else index - half
        link = root / f"d{local // FILES_PER_FOLDER:04d}" / f"{index:07d}{sources[index % len(sources)].suffix}"
        if local % FILES_PER_FOLDER == 0:
            link.parent.mkdir(parents=True, exist_ok=True)
        os.link(sources[index % len(sources)], link)
    marker.touch()


def change_files(roots: tuple[Path, Path], fraction: float, seed: int) -> tuple[int, int]:
    """Add ``fraction`` of the files as new images and give as many others new bytes (written
    under a temporary name and renamed over the link, so --data is untouched). Each new image
    gets its own bytes (a pixel set from its number), so none is a copy of another."""
    from PIL import Image, ImageOps

    files = [path for root in roots for path in source_images(root)]
    count = max(1, round(len(files) * fraction))
    rng = random.Random(seed)
    picked = rng.sample(files, 2 * count)
    for number, path in enumerate(picked):
        with Image.open(path) as opened:
            image = ImageOps.flip(opened.convert("RGB")) if number < count else ImageOps.mirror(opened.convert("RGB"))
        mark = seed * 2 * count + number
        image.putpixel((0, 0), (mark % 256, (mark >> 8) % 256, (mark >> 16) % 256))
        image.putpixel((1, 0), ((mark >> 24) % 256, 255, 0))
        if number < count:
            image.save(path.with_name(f"added-{seed}-{path.stem}.png"))
        else:
            temporary = path.with_name(path.name + ".new")
            image.save(temporary, format="JPEG", quality=95)
            os.replace(temporary, path)
    return count, count


def results_xlsx_rows(path: Path) -> int:
    """Data rows on the workbook's results sheets (results, results-2, ...), counted in the XML."""
    import xml.etree.ElementTree as ElementTree

    main = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
    relation = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
    with zipfile.ZipFile(path) as package:
        rels = ElementTree.fromstring(package.read("xl/_rels/workbook.xml.rels"))
        targets = {rel.get("Id"): rel.get("Target") for rel in rels}
        rows = 0
        for sheet in ElementTree.fromstring(package.read("xl/workbook.xml")).iter(main + "sheet"):
            name, rid = sheet.get("name"), sheet.get(relation)
            if name != "results" and not re.fullmatch(r"results-\d+", name):
                continue
            with package.open("xl/" + targets[rid].lstrip("/").removeprefix("xl/")) as handle:
                tail, count = b"", 0
                while chunk := handle.read(1 << 22):
                    count += (tail + chunk).count(b"<row ")
                    tail = chunk[-8:]
                rows += count - 1  # the header
        return rows


def csv_rows(path: Path) -> int:
    csv.field_size_limit(1 << 30)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return sum(1 for _ in csv.reader(handle)) - 1


def run_night(name: str, roots: tuple[Path, Path], work: Path, extra: list[str]) -> dict:
    out = work / f"night-{name}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "audit.cli", "scan", *map(str, roots), "--out", str(out),
               "--store", str(work / "store.sqlite"), "--quiet", *extra]
    started = time.time()
    process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # wait4's ru_maxrss of a child is the largest of it and its waited-for descendants (Linux).
    stderr_chunks = []
    _, status, usage = os.wait4(process.pid, 0)
    ended = time.time()
    stderr_chunks.append(process.stderr.read() if process.stderr else "")
    process.returncode = os.waitstatus_to_exitcode(status)
    result = {"night": name, "wall_s": ended - started, "exit": process.returncode,
              "peak_rss_mib": usage.ru_maxrss / 1024, "stderr": "".join(stderr_chunks).strip()[-400:],
              "store_mib": sum(p.stat().st_size for p in work.glob("store.sqlite*") if p.is_file()) / 2**20}
    summary_path = out / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        result["files"] = summary["files"]
        result["seconds"] = summary["seconds"]
        result["summary_kib"] = summary_path.stat().st_size / 1024
        report = out / "report.html"
        if report.is_file():
            # From the last results file to the last report file (summary.json is rewritten by the report).
            results_done = max(path.stat().st_mtime for path in out.glob("results.*"))
            report_done = max(path.stat().st_mtime for path in out.glob("report.*"))
            result["seconds"]["report"] = round(report_done - results_done, 3)
            result["report_html_mib"] = report.stat().st_size / 2**20
        result["csv_rows"] = csv_rows(out / "results.csv")
        result["xlsx_rows"] = results_xlsx_rows(out / "results.xlsx") if (out / "results.xlsx").is_file() else None
    result["outputs_left"] = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    return result


def time_store_checks(store: Path) -> dict:
    """Seconds of the check every scan makes (quick_check) and of `audit store check`'s
    integrity_check, on the store as the last night left it (read-only, immutable)."""
    sys.path.insert(0, str(REPO))
    from audit.store import store_findings

    timings = {}
    for name, full in (("quick_check_s", False), ("integrity_check_s", True)):
        started = time.perf_counter()
        findings = store_findings(store, full=full)
        timings[name] = round(time.perf_counter() - started, 2)
        timings[name.replace("_s", "_result")] = findings[0]
    return timings


def print_result(result: dict) -> None:
    seconds = result.get("seconds") or {}
    stages = ", ".join(f"{key} {value:.1f}" for key, value in seconds.items())
    print(f"\n== night {result['night']}: exit {result['exit']}, wall {result['wall_s']:.1f} s, "
          f"peak RSS {result['peak_rss_mib']:.0f} MiB, store {result['store_mib']:.1f} MiB", flush=True)
    if "files" in result:
        print(f"   files {result['files']}, CSV rows {result['csv_rows']}, XLSX rows {result['xlsx_rows']}, "
              f"summary.json {result['summary_kib']:.1f} KiB, report.html {result.get('report_html_mib', 0):.2f} MiB")
        print(f"   seconds: {stages}")
    else:
        print(f"   no summary.json; left in the out folder: {result['outputs_left']}; stderr: {result['stderr']}")
    print("   " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of source images (CIFAKE test split)")
    parser.add_argument("--files", type=int, default=100_000, help="files in the archive (at most 1,000,000)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the archive, store and run folders")
    parser.add_argument("--keep", action="store_true", help="keep --work afterwards")
    parser.add_argument("--nights", default=",".join(NIGHTS), help=f"comma-separated, of {', '.join(NIGHTS)}")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--model", default=None, help="a model name or file (default: the shipped default)")
    parser.add_argument("--check-store", action="store_true",
                        help="also time the store checks (quick_check, integrity_check) after each night")
    args = parser.parse_args()
    if not 2 <= args.files <= 1_000_000:
        raise SystemExit("--files must be between 2 and 1,000,000")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    roots = (work / "archive" / "A", work / "archive" / "B")
    extra = [*(["--no-report"] if args.no_report else []), *(["--model", args.model] if args.model else [])]
    try:
        started = time.perf_counter()
        build_archive(args.data, roots, args.files)
        print(f"archive: {args.files} files under {roots[0]} and {roots[1]} ({time.perf_counter() - started:.1f} s)",
              flush=True)
        for night in args.nights.split(","):
            if night == "changed":
                added, changed = change_files(roots, 0.01, seed=int(time.time()) % 1000)
                print(f"changed night: {added} files added, {changed} changed", flush=True)
            if night == "root-missing":
                away = roots[1].with_name(roots[1].name + ".unmounted")
                roots[1].rename(away)
                roots[1].mkdir()
                try:
                    print_result(run_night(night, roots, work, extra))
                finally:
                    roots[1].rmdir()
                    away.rename(roots[1])
                continue
            print_result(run_night(night, roots, work, extra))
            if args.check_store:
                print(f"   store checks: {time_store_checks(work / 'store.sqlite')}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
