"""What the uncertain verdict costs a scan: the same model without uncertain rules, with them (band and
novelty: one small matrix product on features the network computes anyway), and with the
degraded-copy check (a second decode and score of every image), one `audit scan` process each,
alternating (A B C A B C ...) so that a busy machine weighs on all. Run by hand (it is not a test).

    python benchmarks/bench_uncertain.py --data examples/cifake-sample \\
        --plain /tmp/plain/general-resnet18.json --calibrated /tmp/calibrated/general-resnet18.json --repeats 5

``--calibrated`` is a copy of the plain model after `python -m training calibrate-uncertain`. Each scan
scores every file (--full, its own fresh store), without report or XLSX, on the CPU. Prints, per
configuration, the best of the stage throughput summary.json reports (files / (discover + load and
score + write) seconds: start-up left out, which dominates a 200-file folder) and the wall clock.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench_models import timed_scan  # noqa: E402 - the same timed scan, alternated by model


def in_process_cost(data: Path, plain: str, calibrated: str, repeats: int) -> None:
    """The parts alone, in this process: decoding every file with and without its degraded copy,
    and the network on the decoded batch with and without the novelty (best of ``repeats``)."""
    import torch

    from audit.engines import Scorer, collate_results
    from audit.intake import FileRecord, LoadOptions, load_image
    from audit.model import load_model, plan_compute

    files = sorted(path for path in data.rglob("*") if path.suffix.lower() in (".png", ".jpg", ".jpeg"))
    records = [FileRecord(root=str(data), rel_path=str(path.relative_to(data)), abs_path=str(path)) for path in files]
    models = {"without": load_model(plain), "with novelty": load_model(calibrated)}
    pre = models["without"].card.preprocessing
    best: dict[str, float] = {}

    def clock(name: str, action) -> None:
        started = time.perf_counter()
        action()
        best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)

    plan = plan_compute("cpu", "fp32")
    scorers = {name: Scorer(model, plan) for name, model in models.items()}
    for _ in range(repeats):
        for degraded in (False, True):
            options = LoadOptions(preprocessing=pre, check_degraded=degraded)
            clock(f"decode{' + degraded copy' if degraded else ''}",
                  lambda options=options: [load_image(record, options) for record in records])
        plain_batch = collate_results([load_image(record, LoadOptions(preprocessing=pre)) for record in records])
        batch = collate_results([load_image(record, LoadOptions(preprocessing=pre, check_degraded=True))
                                 for record in records])
        with torch.inference_mode():
            for name, scorer in scorers.items():
                clock(f"network, {name}",
                      lambda scorer=scorer: scorer.scores(plain_batch.images, plain_batch.view_counts))
            clock("network, with novelty + degraded copies",
                  lambda: scorers["with novelty"].scores(batch.images, batch.view_counts, batch.degraded))
    for name, seconds in best.items():
        print(f"{len(records)} files, {name}: best {seconds:.3f} s = {len(records) / seconds:.0f} files/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--plain", required=True, help="the model's card without uncertain rules")
    parser.add_argument("--calibrated", required=True, help="the same weights with band and novelty in the card")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scan-args", default="", help="extra `audit scan` options for every run, one string")
    parser.add_argument("--in-process", action="store_true", help="time the decode and the network alone instead")
    args = parser.parse_args()
    if args.in_process:
        in_process_cost(args.data, args.plain, args.calibrated, args.repeats)
        return
    extra = args.scan_args.split()
    configurations = {
        "without uncertain rules": (args.plain, extra),
        "band + novelty": (args.calibrated, extra),
        "band + novelty + --check-degraded": (args.calibrated, [*extra, "--check-degraded"]),
    }
    best: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-uncertain-") as work:
        for repeat in range(args.repeats):
            for name, (model, options) in configurations.items():
                seconds, summary = timed_scan(args.data, model, Path(work), options)
                rate, files = float(summary.throughput_files_per_s or 0), summary.files
                print(f"run {repeat + 1} {name}: {files} files, {rate:.0f} files/s in the stages, {seconds:.1f} s wall")
                old_rate, old_seconds = best.get(name, (0.0, float("inf")))
                best[name] = (max(old_rate, rate), min(old_seconds, seconds))
    first = next(iter(configurations))
    for name in configurations:
        rate, seconds = best[name]
        print(f"{name}: best {rate:.0f} files/s ({rate / best[first][0]:.2f}x), best wall {seconds:.1f} s")


if __name__ == "__main__":
    main()
