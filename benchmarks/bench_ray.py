"""Benchmark `audit scan --engine ray` against the plain (local) scan. Run by hand, not a test.

It starts a one-machine Ray cluster of its own (`ray start --head --block`, in a process group it
ends itself afterwards; never `ray stop`, which would end every Ray process on the machine), then
alternates plain and Ray scans (`--full`, report and XLSX off, each a separate `audit scan`
process timed by wall clock) over the same folder:

* a small run (``--small`` files) and the full folder per engine, ``--repeats`` times;
* throughput = files / the scan's stage seconds (summary.json's ``throughput_files_per_s``,
  whose load-and-score time includes the Ray engine's connection, path check and actor start);
* steady-state throughput = (big - small files) / (big - small wall seconds), which cancels
  each engine's fixed costs;
* start-up overhead = Ray wall seconds - plain wall seconds on the small run, and the engine's
  own stage seconds (connect, path check, first batch) from summary.json.

Example (the CIFAKE test split, 20,000 files; target: Ray >= 0.8x the plain scan's throughput):

    .venv/bin/python benchmarks/bench_ray.py --data /tmp/cifake-test --num-cpus 2

With a GPU: --gpus-per-actor 1 --decode-cpus-sweep 1,2,4,8 adds Ray runs with one GPU actor and
each number of decode CPUs, and a decode-only ceiling (the scan's loading code in that many
processes, no model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from audit.summary import read_summary  # noqa: E402 - after the path


def ray_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray >= 2.59 turns token authentication on for a new head; drivers must then send the token
    # (Ray keeps it in ~/.ray/auth_token).
    env.setdefault("RAY_AUTH_MODE", "token")
    # Workers import this checkout's audit package, as the driver does.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start_cluster(num_cpus: int, num_gpus: int | None, port: int) -> tuple[subprocess.Popen, str]:
    ray = Path(sys.executable).with_name("ray")
    command = [str(ray), "start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}",
               "--include-dashboard=false", "--disable-usage-stats"]
    if num_gpus is not None:
        command.append(f"--num-gpus={num_gpus}")
    process = subprocess.Popen(command, env=ray_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    probe = [sys.executable, "-c", f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
             "print(ray.cluster_resources())"]
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"ray start exited with {process.returncode}")
        done = subprocess.run(probe, env=ray_env(), capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            print(f"cluster at {address}: {done.stdout.strip()}", flush=True)
            return process, address
        time.sleep(2)
    stop_cluster(process)
    raise SystemExit(f"the Ray cluster did not come up within 120 s: {done.stderr.strip().splitlines()[-1:]}")


def stop_cluster(process: subprocess.Popen) -> None:
    """End the cluster this benchmark started: its own process group, nothing else."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        time.sleep(5)  # the GCS server drains a few seconds after its parent has gone
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def timed_scan(data: Path, model: str | None, work: Path, name: str, extra: list[str]) -> tuple[float, dict]:
    out = work / name
    command = [sys.executable, "-m", "audit.cli", "scan", str(data), "--out", str(out), "--store",
               str(work / f"{name}.sqlite"), "--full", "--quiet", "--no-report", "--no-xlsx", *extra]
    if model:
        command += ["--model", model]
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO, env=ray_env(), stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if finished.returncode not in (0, 3, 4):
        raise SystemExit(f"{' '.join(command)} exited with {finished.returncode}")
    summary = read_summary(out / "summary.json")
    shutil.rmtree(out)
    return seconds, summary


def small_copy(data: Path, target: Path, count: int) -> Path:
    """The first ``count`` images of ``data`` (sorted), hard-linked into ``target``."""
    files = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for path in files[:count]:
        link = target / path.relative_to(data)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, link)
    return target


def decode_ceiling(data: Path, processes: int, limit: int = 5000) -> float:
    """Images per second the scan's own loading code decodes in ``processes`` processes (no model)."""
    code = f"""
import sys, time
from multiprocessing import Pool
sys.path.insert(0, {str(REPO)!r})
from audit.intake import discover
from audit.intake import LoadOptions, load_image
from audit.model import read_card, DEFAULT_MODEL_PATH
records = list(discover([{str(data)!r}]))[:{limit}]
options = LoadOptions(preprocessing=read_card(DEFAULT_MODEL_PATH).preprocessing)
def work(record):
    return load_image(record, options).ok
with Pool({processes}) as pool:
    pool.map(work, records[:64])
    started = time.perf_counter()
    pool.map(work, records, chunksize=64)
    print(len(records) / (time.perf_counter() - started))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ray_env(), check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of images, e.g. the CIFAKE test split")
    parser.add_argument("--model", default=None, help="model card (default: the shipped model)")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the benchmark's cluster")
    parser.add_argument("--num-gpus", type=int, default=None, help="GPUs of the benchmark's cluster (default: Ray's count)")
    parser.add_argument("--port", type=int, default=6390, help="the head's GCS port")
    parser.add_argument("--small", type=int, default=512, help="files of the small run (start-up overhead)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gpus-per-actor", type=float, default=0.0)
    parser.add_argument("--decode-cpus-sweep", default="", help="e.g. 1,2,4,8: Ray runs with each --ray-decode-cpus")
    parser.add_argument("--plain-extra", default="", help="extra options for the plain scan, e.g. '--device cuda'")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    small = small_copy(args.data, work / "small-data", args.small)
    big_files = sum(1 for p in args.data.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    process, address = start_cluster(args.num_cpus, args.num_gpus, args.port)
    ray_extra = ["--engine", "ray", "--ray-address", address]
    if args.gpus_per_actor:
        ray_extra += ["--ray-gpus-per-actor", str(args.gpus_per_actor)]
    plain_extra = args.plain_extra.split()
    results: dict[str, dict[str, list[float]]] = {}

    def record(label: str, key: str, value: float) -> None:
        results.setdefault(label, {}).setdefault(key, []).append(value)

    try:
        timed_scan(small, args.model, work, "warm-up", ray_extra)  # the cluster's first job: imports
        for repeat in range(args.repeats):
            for label, extra in (("plain", plain_extra), ("ray", ray_extra)):
                wall_small, summary_small = timed_scan(small, args.model, work, f"{label}-small-{repeat}", extra)
                wall_big, summary_big = timed_scan(args.data, args.model, work, f"{label}-big-{repeat}", extra)
                record(label, "wall_small", wall_small)
                record(label, "wall_big", wall_big)
                record(label, "throughput", summary_big.throughput_files_per_s)
                record(label, "steady", (summary_big.files - summary_small.files) / (wall_big - wall_small))
                if label == "ray":
                    for stage, seconds in summary_big.engine["seconds"].items():
                        record(label, f"engine_{stage}", seconds)
                print(f"{label} #{repeat + 1}: small {wall_small:.1f} s, big {wall_big:.1f} s wall, "
                      f"throughput {summary_big.throughput_files_per_s} files/s, compute {summary_big.compute}, "
                      f"engine {json.dumps(summary_big.engine)}", flush=True)
        for cpus in filter(None, args.decode_cpus_sweep.split(",")):
            wall, summary = timed_scan(args.data, args.model, work, f"ray-decode-{cpus}",
                                       ray_extra + ["--ray-decode-cpus", cpus])
            print(f"ray, 1 actor, {cpus} decode CPUs: {summary.throughput_files_per_s} files/s "
                  f"({wall:.1f} s wall); decode-only ceiling with {cpus} processes: "
                  f"{decode_ceiling(args.data, int(cpus)):.0f} images/s", flush=True)
    finally:
        stop_cluster(process)
        shutil.rmtree(work, ignore_errors=True)

    median = {label: {key: statistics.median(values) for key, values in keys.items()} for label, keys in results.items()}
    plain, ray = median["plain"], median["ray"]
    print(f"\n{big_files} files, medians of {args.repeats} runs each, cluster of {args.num_cpus} CPUs")
    print(f"plain scan: {plain['throughput']:.0f} files/s (stage seconds); steady state {plain['steady']:.0f} files/s; "
          f"wall {plain['wall_big']:.1f} s")
    print(f"--engine ray: {ray['throughput']:.0f} files/s (stage seconds); steady state {ray['steady']:.0f} files/s; "
          f"wall {ray['wall_big']:.1f} s")
    print(f"ratio ray / plain: throughput {ray['throughput'] / plain['throughput']:.2f}x, "
          f"steady state {ray['steady'] / plain['steady']:.2f}x, wall {plain['wall_big'] / ray['wall_big']:.2f}x "
          f"(target >= 0.8x)")
    print(f"start-up overhead: {ray['wall_small'] - plain['wall_small']:.1f} s more wall time than the plain scan on "
          f"{args.small} files; engine stages: connect {ray['engine_connect']:.2f} s, path check "
          f"{ray['engine_path_check']:.2f} s, first batch {ray['engine_first_batch']:.2f} s")


if __name__ == "__main__":
    main()
