"""Benchmark ``audit scan`` against its parts and against the original demo's pipeline.

Run by hand on an idle machine (it is not a test). In one run it measures:

  (a) decode only: the scan's own loading code and DataLoader workers, no model;
  (b) model only: the scan's Scorer on already-decoded uint8 tensors, same batch size;
  (c) the full scan (run_scan, CSV + XLSX + summary written);
      and prints the ideal 1/(1/a + 1/b) for parts sharing the same cores, and c / ideal;
  (d) the original demo's pipeline as the peer baseline: each image opened with PIL, resized
      to 224, fed to a stock torchvision ResNet18 (random weights: a speed baseline), batch 64,
      no workers; and the scan's speed-up over it;
  (e) --large-photos N: N generated 12 MP JPEGs scanned with and without draft decoding;
  (f) --memory-files N: a scan of N files (hard links to the data set's files) in a child
      process; the memory of the whole process tree (main + workers, as the sum of PSS, so
      shared pages count once) is sampled every 0.2 s, and the main process's peak RSS is read.

Example (the CIFAKE test split, 20,000 files):

    .venv/bin/python benchmarks/bench_scan.py --extract-zip ../shared/data/cifake.zip \\
        --data /tmp/cifake-test --workers-sweep 0,1,2 --large-photos 200 --memory-files 100000 \\
        --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from audit.config import ScanOptions  # noqa: E402
from audit.engines import Scorer, make_loader  # noqa: E402
from audit.intake import (
    LoadOptions,  # noqa: E402
    discover,  # noqa: E402
)
from audit.model import DEFAULT_BATCH_SIZE, DEFAULT_MODEL_PATH, LoadedModel, default_workers, load_model, plan_compute  # noqa: E402  # noqa: E402
from audit.pipeline import run_scan
from audit.summary import RunSummary  # noqa: E402 - after the path


def extract_split(zip_path: Path, split: str, target: Path) -> None:
    """Extract SPLIT/** of the CIFAKE zip into target (skipped when already there)."""
    marker = target / f".extracted-{split}"
    if marker.exists():
        return
    with zipfile.ZipFile(zip_path) as archive:
        members = [m for m in archive.namelist() if m.startswith(f"{split}/") and not m.endswith("/")]
        for member in members:
            archive.extract(member, target)
    marker.touch()
    print(f"extracted {len(members)} files of {split}/ to {target} (hidden ones, e.g. .DS_Store, are not scanned)")


def timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


# --------------------------------------------------------------------------- (a) (b) (c)


def decode_only(records, options: LoadOptions, batch_size: int, workers: int) -> tuple[torch.Tensor, float]:
    """(a): the scan's DataLoader without the model; returns the decoded batch and images/s."""
    def run():
        batches = [batch.images for batch in make_loader(records, options, batch_size, workers, pin_memory=False)]
        return torch.cat([b for b in batches if b.numel()])

    images, seconds = timed(run)
    return images, len(records) / seconds


def model_only(scorer: Scorer, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, float]:
    """(b): the scan's Scorer on decoded tensors; returns probabilities and images/s."""
    scorer.probabilities(images[:batch_size])  # warm-up: oneDNN builds its kernels on first use

    def run():
        return torch.cat([scorer.probabilities(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])

    probs, seconds = timed(run)
    return probs, len(images) / seconds


def full_scan(data: Path, model: LoadedModel, args, out: Path, **overrides) -> RunSummary:
    # report=False: the benchmark measures the scan; the report stage has benchmarks/bench_report.py.
    settings = {"device": args.device, "precision": args.precision, "workers": args.workers,
                "batch_size": args.batch_size, "report": False,
                "full": True}  # every run scores every file: the runs share a run store
    settings.update(overrides)
    options = ScanOptions(archives=(str(data),), out_dir=out, progress="none", **settings)
    return run_scan(options, model=model).summary


# --------------------------------------------------------------------------- (d)


def demo_pipeline(paths: list[str], batch_size: int = 64) -> float:
    """(d): the original demo: PIL -> 224x224 -> stock ResNet18, batch 64, no workers, fp32."""
    from PIL import Image
    from torchvision.models import resnet18

    network = resnet18(weights=None, num_classes=2).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def run():
        with torch.no_grad():
            for start in range(0, len(paths), batch_size):
                arrays = [
                    np.asarray(Image.open(path).convert("RGB").resize((224, 224)), dtype=np.float32) / 255.0
                    for path in paths[start : start + batch_size]
                ]
                batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
                torch.softmax(network((batch - mean) / std), dim=1)

    _, seconds = timed(run)
    return len(paths) / seconds


# --------------------------------------------------------------------------- (e)


def make_large_photos(folder: Path, count: int, width: int = 4000, height: int = 3000) -> None:
    """count different photo-like 12 MP JPEGs (smooth colour fields, noise, edges)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 256, (height // 100, width // 100, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC))
    grain = rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    photo = Image.fromarray(np.clip(base.astype(np.int16) + grain, 0, 255).astype(np.uint8))
    for i in range(count):
        path = folder / f"photo-{i:04d}.jpg"
        if path.exists():
            continue
        variant = photo.copy()
        draw = ImageDraw.Draw(variant)
        for _ in range(8):  # a few different strokes make every file different
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.line([(x, y), (x + 800, y + 500)], fill=colour, width=int(rng.integers(5, 60)))
        variant.save(path, quality=90)


# --------------------------------------------------------------------------- (f)


def make_many_files(source_files: list[str], folder: Path, count: int, per_folder: int = 1000) -> None:
    """count files as hard links (copies where links fail) to the source files, in folders."""
    marker = folder / f".made-{count}"
    if marker.exists():
        return
    for i in range(count):
        target = folder / f"d{i // per_folder:04d}" / f"f{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            continue
        source = source_files[i % len(source_files)]
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    marker.touch()


def tree_memory_mb(pid: int) -> float:
    """Memory of a process and its descendants: the sum of PSS (shared pages split between the
    processes that share them), falling back to RSS where smaps_rollup is unavailable."""
    total_kb = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/smaps_rollup").read_text().splitlines()
            pss = [line for line in fields if line.startswith("Pss:")]
            if not pss:
                pss = [line for line in Path(f"/proc/{current}/status").read_text().splitlines() if line.startswith("VmRSS:")]
            total_kb += int(pss[0].split()[1]) if pss else 0
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(child) for child in children)
        except (OSError, ValueError, IndexError):
            continue
    return total_kb / 1024


def memory_run(folder: Path, args, out: Path) -> dict:
    command = [sys.executable, "-m", "audit.cli", "scan", str(folder), "--out", str(out), "--quiet", "--no-report",
               "--batch-size", str(args.batch_size), "--device", args.device, "--precision", args.precision]
    if args.model:
        command += ["--model", str(args.model)]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO)
    peak_tree_mb = 0.0
    while True:
        # wait4 gives this child's own rusage (the benchmark's other children are not mixed in).
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak_tree_mb = max(peak_tree_mb, tree_memory_mb(process.pid))
        time.sleep(0.2)
    return {
        "exit_code": os.waitstatus_to_exitcode(status),
        "seconds": round(time.perf_counter() - start, 2),
        "peak_tree_pss_mb_sampled": round(peak_tree_mb, 1),
        "peak_main_process_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of images (e.g. the CIFAKE test split)")
    parser.add_argument("--extract-zip", type=Path, help="first extract SPLIT/ of this CIFAKE zip into --data")
    parser.add_argument("--split", default="test", help="split to extract with --extract-zip (default: test)")
    parser.add_argument("--model", type=Path, default=None, help=f"model (default: {DEFAULT_MODEL_PATH})")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: the scan's default)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N files (a smoke test)")
    parser.add_argument("--baseline-files", type=int, default=2000,
                        help="files for the (slow) demo-pipeline baseline (default 2000; 0 skips it)")
    parser.add_argument("--workers-sweep", default="",
                        help="also run the full scan with each of these worker counts, e.g. 0,1,2 (to choose the default)")
    parser.add_argument("--large-photos", type=int, default=0, help="(e) generate and scan N 12 MP JPEGs")
    parser.add_argument("--memory-files", type=int, default=0, help="(f) scan N files and report peak memory")
    parser.add_argument("--work-dir", type=Path, default=None, help="where generated files and outputs go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.extract_zip:
        extract_split(args.extract_zip, args.split, args.data)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-scan-"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data
    records = list(discover([data]))
    if args.limit:
        records = records[: args.limit]
        subset = work / "subset"
        if not subset.exists():
            for record in records:
                target = subset / record.rel_path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(record.abs_path, target)
        data = subset
        records = list(discover([data]))
    model = load_model(args.model)
    plan = plan_compute(args.device, args.precision, model.card.compute_dtype)
    workers = args.workers if args.workers is not None else default_workers(plan.device)
    load_options = LoadOptions(preprocessing=model.card.preprocessing)
    figures: dict = {
        "files": len(records), "model": model.model_id, "compute": plan.describe(), "workers": workers,
        "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
    }
    print(json.dumps(figures))

    images, a = decode_only(records, load_options, args.batch_size, workers)
    print(f"(a) decode only:  {a:9.1f} images/s")
    scorer = Scorer(model, plan)
    probs, b = model_only(scorer, images, args.batch_size)
    print(f"(b) model only:   {b:9.1f} images/s ({figures['compute']['precision']})")
    if plan.device.type == "cpu":
        other = plan_compute("cpu", "fp32" if plan.autocast_dtype is not None else "bf16")
        other_probs, other_b = model_only(Scorer(model, other), images, args.batch_size)
        difference = (other_probs - probs).abs()
        figures["model_only_other_precision"] = {
            "precision": other.describe()["precision"], "images_per_s": other_b,
            "max_abs_prob_difference": difference.max().item(), "mean_abs_prob_difference": difference.mean().item(),
            "verdict_flips": int(((other_probs >= model.card.threshold) != (probs >= model.card.threshold)).sum()),
        }
        print(f"    other precision: {json.dumps(figures['model_only_other_precision'])}")
    summary = full_scan(data, model, args, work / "scan-out")
    c = summary.throughput_files_per_s
    ideal = 1 / (1 / a + 1 / b)
    print(f"(c) full scan:    {c:9.1f} images/s; ideal 1/(1/a+1/b) = {ideal:.1f}; c/ideal = {c / ideal:.2f} (target >= 0.8)")
    figures.update({"decode_only_per_s": a, "model_only_per_s": b, "scan_per_s": c, "ideal_per_s": ideal, "scan_over_ideal": c / ideal,
                    "scan_seconds": summary.seconds})

    if args.workers_sweep:
        sweep = {}
        for count in (int(n) for n in args.workers_sweep.split(",")):
            sweep[count] = full_scan(data, model, args, work / f"scan-workers-{count}", workers=count)["throughput_files_per_s"]
            print(f"    full scan with --workers {count}: {sweep[count]:.1f} images/s")
        figures["scan_per_s_by_workers"] = sweep

    if args.baseline_files:
        paths = [r.abs_path for r in records[: args.baseline_files]]
        d = demo_pipeline(paths)
        print(f"(d) demo pipeline: {d:8.1f} images/s on {len(paths)} files; scan / demo = {c / d:.1f}x (expect >= 20x)")
        figures.update({"demo_pipeline_per_s": d, "demo_pipeline_files": len(paths), "scan_over_demo": c / d})

    if args.large_photos:
        photos = work / "large-photos"
        _, seconds = timed(lambda: make_large_photos(photos, args.large_photos))
        print(f"    generated {args.large_photos} 12 MP JPEGs in {seconds:.0f} s")
        draft = full_scan(photos, model, args, work / "photos-draft")["throughput_files_per_s"]
        full = full_scan(photos, model, args, work / "photos-full", draft=False)["throughput_files_per_s"]
        print(f"(e) 12 MP JPEGs:  draft {draft:.2f} images/s, full decode {full:.2f} images/s ({draft / full:.1f}x)")
        figures.update({"large_photos": args.large_photos, "large_draft_per_s": draft, "large_full_per_s": full})

    if args.memory_files:
        many = work / f"many-{args.memory_files}"
        make_many_files([r.abs_path for r in records], many, args.memory_files)
        memory = memory_run(many, args, work / "many-out")
        print(f"(f) {args.memory_files} files: {json.dumps(memory)} (target <= 2048 MB)")
        figures["memory"] = {"files": args.memory_files, **memory}

    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
