"""Benchmark the nightly rerun. Run by hand (it is not a test).

Three `audit scan` processes on one fresh run store, each timed by wall clock (what a nightly job
costs: interpreter and torch start-up, model loading, the walk, the store lookups, the CSV, XLSX,
summary.json and, unless --no-report, the report):

1. the first run over a folder;
2. a second run over the unchanged folder (it scores nothing, explains nothing, and renders the
   report from what the run store kept: Grad-CAM maps, gallery pictures, laid-out PDF parts);
3. with --changes F (default 0.01): a third run after F of the files were added and F changed
   (it scores those, explains only the newly flagged ones, and renders the report).

The folder is first mirrored with hard links into a temporary folder, so the changes never touch
--data (a changed file is written under a new name and renamed over its link).

--rss-files N instead measures peak memory (report off): N hard links of the folder's files, one
first run on a fresh store, stopped with SIGTERM after --rss-seconds if it has not finished (its
memory is settled once scoring runs: every file record is made before). It prints the main
process's peak RSS (ru_maxrss) and the largest sum over the process and its decode workers.

Examples (the CIFAKE test split, 20,000 files; targets: at least 20x unchanged, 10x after 1%+1%):

    .venv/bin/python benchmarks/bench_incremental.py --extract-zip ../shared/data/cifake.zip \\
        --data /tmp/cifake-test --model audit/weights/cifake-resnet18.json
    .venv/bin/python benchmarks/bench_incremental.py --data /tmp/cifake-test/test \\
        --model audit/weights/cifake-resnet18.json --rss-files 1000000 --rss-seconds 300

Smoke test on a busy machine: --limit 300 extracts only the first 300 files of the split.
Without --model a randomly initialised model of the default architecture is made in a temporary
folder: the timings do not depend on the weights (but the gallery does: a random model flags
about half of the files).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from audit.summary import RunSummary, read_summary  # noqa: E402 - after the path


def extract_split(zip_path: Path, split: str, target: Path, limit: int | None) -> int:
    """Extract SPLIT/ of the CIFAKE zip (its first ``limit`` files) into ``target``."""
    with zipfile.ZipFile(zip_path) as archive:
        members = [m for m in archive.infolist() if m.filename.startswith(f"{split}/") and not m.is_dir()]
        members = members[:limit] if limit else members
        for member in members:
            archive.extract(member, target)
    return len(members)


def make_random_model(folder: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from audit.model import ModelCard, build_network, save_model

    card = ModelCard(name="bench-random")
    save_model(build_network(card.variant), card, folder / "bench-random")
    return folder / "bench-random.json"


def image_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg", ".png"))


def mirror_with_links(source: Path, target: Path) -> int:
    """target/ holds a hard link to every file of source/ (same layout); returns the count."""
    count = 0
    for path in image_files(source):
        link = target / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, link)
        count += 1
    return count


def change_files(folder: Path, fraction: float, seed: int = 0) -> tuple[int, int]:
    """Add ``fraction`` of the files as new images (mirrored copies under new names) and change as
    many others (their pixels mirrored, written under a temporary name and renamed over the hard
    link, so the source is untouched). Returns (added, changed)."""
    from PIL import Image, ImageOps

    files = image_files(folder)
    count = max(1, round(len(files) * fraction))
    rng = random.Random(seed)
    picked = rng.sample(files, 2 * count)
    for path in picked[:count]:  # new files
        with Image.open(path) as opened:
            ImageOps.flip(opened.convert("RGB")).save(path.with_name(f"added-{path.stem}.jpg"), quality=95)
    for path in picked[count:]:  # changed files
        temporary = path.with_name(path.name + ".new")
        with Image.open(path) as opened:
            ImageOps.mirror(opened.convert("RGB")).save(temporary, format="JPEG", quality=95)
        os.replace(temporary, path)
    return count, count


def scan_command(data: Path, model: Path, out: Path, store: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "audit.cli", "scan", str(data), "--model", str(model), "--out", str(out),
            "--store", str(store), "--quiet", *extra]


def timed_scan(data: Path, model: Path, out: Path, store: Path, extra: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    finished = subprocess.run(scan_command(data, model, out, store, extra), cwd=REPO, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if finished.returncode not in (0, 3, 4):
        raise SystemExit(f"audit scan failed with exit code {finished.returncode}")
    return seconds, read_summary(out / "summary.json")


def describe(name: str, seconds: float, summary: RunSummary) -> str:
    how = "report rendered" if "report.html" in summary.outputs else "no report"
    return (f"{name}: {seconds:8.2f} s wall, scored {summary.files_scored}, reused {summary.files_reused}, "
            f"flagged {summary.flagged}, {how}; stages {summary.seconds}")


def run_timings(args: argparse.Namespace, model: Path, work: Path) -> None:
    data = work / "data"
    files = mirror_with_links(args.data, data)
    extra = (["--no-report"] if args.no_report else []) + args.scan_args.split()
    store = work / "audit-store.sqlite"
    first_s, first = timed_scan(data, model, work / "first", store, extra)
    print(describe("first run ", first_s, first), flush=True)
    second_s, second = timed_scan(data, model, work / "second", store, extra)
    print(describe("unchanged ", second_s, second), flush=True)
    print(f"files: {files}  (report: {'no, --no-report' if args.no_report else 'yes'})")
    print(f"ratio first/unchanged: {first_s / second_s:.1f}x (target: at least 20x)")
    if args.changes > 0:
        added, changed = change_files(data, args.changes)
        if args.keep:  # to rerun the third night by hand: cp store-before-third.sqlite audit-store.sqlite
            shutil.copyfile(store, work / "store-before-third.sqlite")
        third_s, third = timed_scan(data, model, work / "third", store, extra)
        print(describe("changed   ", third_s, third), flush=True)
        print(f"ratio first/after {added} added + {changed} changed: {first_s / third_s:.1f}x (target: at least 10x)")


def vm_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_of(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run_rss(args: argparse.Namespace, model: Path, work: Path) -> None:
    sources = image_files(args.data)
    data = work / "links"
    started = time.perf_counter()
    for index in range(args.rss_files):
        folder = data / f"{index // 1000:04d}"
        if index % 1000 == 0:
            folder.mkdir(parents=True)
        os.link(sources[index % len(sources)], folder / f"{index:07d}.jpg")
    print(f"made {args.rss_files} hard links in {time.perf_counter() - started:.1f} s", flush=True)
    command = scan_command(data, model, work / "rss", work / "rss-store.sqlite", ["--no-report", *args.scan_args.split()])
    command.remove("--quiet")  # its progress lines say how far it got
    progress_log = open(work / "rss-progress.log", "w+", encoding="utf-8")
    process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stderr=progress_log)
    peak_sum, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            total = vm_kib(process.pid, "VmRSS") + sum(vm_kib(child, "VmRSS") for child in children_of(process.pid))
            peak_sum[0] = max(peak_sum[0], total)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    stopped = False
    while process.poll() is None:
        if args.rss_seconds and time.perf_counter() - started > args.rss_seconds:
            process.send_signal(signal.SIGTERM)
            stopped = True
            break
        time.sleep(0.5)
    _, status, usage = os.wait4(process.pid, 0)
    stop.set()
    seconds = time.perf_counter() - started
    how = f"stopped with SIGTERM after {seconds:.0f} s" if stopped else f"completed in {seconds:.0f} s"
    progress_log.seek(0)
    lines = [line.strip() for line in progress_log if line.strip()]
    print(f"{args.rss_files} files, report off, {how} (exit status {os.waitstatus_to_exitcode(status)}); "
          f"its last progress line: {lines[-1] if lines else 'none'}")
    print(f"peak RSS of the scan process: {usage.ru_maxrss / 1024**2:.2f} GiB; largest sum with its workers "
          f"(shared pages counted in each): {peak_sum[0] / 1024**2:.2f} GiB (target: at most 1.2 GB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of images to scan (made by --extract-zip)")
    parser.add_argument("--extract-zip", type=Path, help="first extract SPLIT/ of this CIFAKE zip into --data")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="extract only the first N files (smoke test)")
    parser.add_argument("--model", type=Path, default=None, help="model card; default: a random model of the default architecture")
    parser.add_argument("--no-report", action="store_true", help="skip report.html/pdf in every run (the default renders it)")
    parser.add_argument("--changes", type=float, default=0.01, help="fraction of files added and of files changed before the third run (0: no third run)")
    parser.add_argument("--rss-files", type=int, default=0, help="measure peak RSS over this many hard links instead")
    parser.add_argument("--rss-seconds", type=float, default=0, help="stop the RSS run with SIGTERM after this long (0: let it finish)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the temporary copies (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed) to look into")
    parser.add_argument("--scan-args", default="", help="more `audit scan` options, e.g. --scan-args=\"--no-xlsx --workers 1\" (with =, as it starts with --)")
    args = parser.parse_args()

    if args.extract_zip:
        print(f"extracted {extract_split(args.extract_zip, args.split, args.data, args.limit)} files to {args.data}")
    work = Path(tempfile.mkdtemp(prefix="bench-incremental-", dir=args.work))
    try:
        model = args.model or make_random_model(work)
        if args.rss_files:
            run_rss(args, model, work)
        else:
            run_timings(args, model, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
