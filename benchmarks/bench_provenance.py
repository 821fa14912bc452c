"""What the evidence stage (audit/provenance.py) adds to scan time. Run by hand, not a test.

    .venv/bin/python benchmarks/bench_provenance.py --extract-zip ../shared/data/cifake.zip --data /tmp/cifake-test
    .venv/bin/python benchmarks/bench_provenance.py --data /tmp/cifake-test --limit 500 --repeats 3   # smoke

Two measurements on the same files:

(a) the full scan (``run_scan``, report off) with and without evidence (``--no-evidence``),
    alternated ``--repeats`` times so that a change in machine load hits both alike; the figure
    is the median of the scan's own stage seconds (discover + load and score + write).
    Target: evidence adds at most 10%.
(b) the evidence stage alone, in this process: read_evidence() on each file's bytes and opened
    image, per file, against the decode the load stage does anyway. Less noisy than (a) on a
    busy machine, and it says where the cost is.

Without --model a randomly initialised model of the default architecture is used: scan time
does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from audit.summary import RunSummary  # noqa: E402 - after the path

sys.path.insert(0, str(REPO / "benchmarks"))

from bench_scan import extract_split  # noqa: E402
from PIL import Image  # noqa: E402

from audit.config import ScanOptions  # noqa: E402
from audit.evidence import (  # noqa: E402
    EvidenceOptions,
    has_c2pa_marker,
    read_evidence,  # noqa: E402
)
from audit.intake import discover  # noqa: E402
from audit.model import DEFAULT_MODEL_PATH, ModelCard, build_network, load_model, save_model  # noqa: E402
from audit.pipeline import run_scan


def limited_copy(data: Path, limit: int, target: Path) -> Path:
    """The first ``limit`` files in discovery order, copied (folders kept) into target."""
    if target.exists():
        shutil.rmtree(target)
    for n, record in enumerate(discover([str(data)])):
        if n >= limit:
            break
        destination = target / record.rel_path
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record.abs_path, destination)
    return target


def model_path(args: argparse.Namespace, work: Path) -> Path:
    if args.model:
        return args.model
    if DEFAULT_MODEL_PATH.exists():
        return DEFAULT_MODEL_PATH
    card = ModelCard(name="bench-random")
    save_model(build_network(card.variant), card, work / "bench-random")
    print("no trained model installed: a randomly initialised one of the same architecture is timed")
    return work / "bench-random.json"


def stage_seconds(summary: RunSummary) -> float:
    seconds = summary.seconds
    return seconds["discover"] + seconds["load_and_score"] + seconds["write"]


def scan_pair(data: Path, model_file: Path, args: argparse.Namespace, work: Path) -> dict:
    """(a): alternate runs with and without evidence; medians of the stage seconds."""
    model = load_model(model_file)
    times: dict[str, list[float]] = {"with_evidence": [], "without_evidence": []}
    files = 0
    for repeat in range(args.repeats):
        order = (True, False) if repeat % 2 == 0 else (False, True)
        for evidence in order:
            out = work / f"out-{repeat}-{int(evidence)}"
            options = ScanOptions(archives=(str(data),), out_dir=out, model_path=str(model_file), workers=args.workers,
                                  progress="none", report=False, evidence=evidence,
                                  full=True)  # score every file: the runs share a run store
            summary = run_scan(options, model=model).summary
            files = summary.files
            times["with_evidence" if evidence else "without_evidence"].append(stage_seconds(summary))
            shutil.rmtree(out)
    with_evidence, without = statistics.median(times["with_evidence"]), statistics.median(times["without_evidence"])
    return {
        "files": files,
        "repeats": args.repeats,
        "seconds_with_evidence": [round(t, 3) for t in times["with_evidence"]],
        "seconds_without_evidence": [round(t, 3) for t in times["without_evidence"]],
        "median_with_evidence": round(with_evidence, 3),
        "median_without_evidence": round(without, 3),
        "overhead_percent": round(100 * (with_evidence / without - 1), 1),
    }


def evidence_alone(data: Path) -> dict:
    """(b): per file, decode (as the load stage does) and read_evidence, timed apart."""
    options = EvidenceOptions()
    decode_seconds = evidence_seconds = 0.0
    files = with_marker = with_findings = 0
    for record in discover([str(data)]):
        payload = Path(record.abs_path).read_bytes()
        started = time.perf_counter()
        image = Image.open(io.BytesIO(payload))
        image.load()
        decode_seconds += time.perf_counter() - started
        started = time.perf_counter()
        findings = read_evidence(payload, image.format, image, options)
        evidence_seconds += time.perf_counter() - started
        files += 1
        with_marker += has_c2pa_marker(payload)
        with_findings += bool(findings)
    return {
        "files": files,
        "files_with_jumbf_marker": with_marker,
        "files_with_findings": with_findings,
        "decode_us_per_file": round(1e6 * decode_seconds / max(files, 1), 1),
        "evidence_us_per_file": round(1e6 * evidence_seconds / max(files, 1), 1),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of images (e.g. the CIFAKE test split)")
    parser.add_argument("--extract-zip", type=Path, help="first extract SPLIT/ of this CIFAKE zip into --data")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="only the first N files (a smoke test)")
    parser.add_argument("--repeats", type=int, default=3, help="scan pairs, alternated (default 3)")
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: the scan's default)")
    parser.add_argument("--model", type=Path, default=None, help="model card (default: the installed model, else random weights)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.extract_zip:
        extract_split(args.extract_zip, args.split, args.data)
    with tempfile.TemporaryDirectory(prefix="bench-provenance-") as temporary:
        work = Path(temporary)
        data = limited_copy(args.data, args.limit, work / "data") if args.limit else args.data
        figures = {"evidence_alone": evidence_alone(data), "scan": scan_pair(data, model_path(args, work), args, work)}
    print(json.dumps(figures, indent=2))
    scan = figures["scan"]
    print(f"evidence adds {scan['overhead_percent']:+.1f}% to the scan ({scan['median_without_evidence']:.2f} s -> "
          f"{scan['median_with_evidence']:.2f} s for {scan['files']} files; target <= +10%)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
