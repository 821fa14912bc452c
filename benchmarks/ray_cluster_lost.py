"""Check by hand what `audit scan --engine ray` does when its cluster dies mid-run (not a test:
it needs a cluster of its own and about a minute).

It starts a one-machine cluster (`ray start --head --block` in a process group of its own), runs a
scan on it, SIGKILLs the whole cluster once the driver has committed ``--kill-after`` files to the
run store, and reports the scan's exit code (expected 6), how long it took to notice, its message,
and the files kept in the store. A second scan on the same store, with the local engine, then
shows the resume: it reuses the committed files.

    .venv/bin/python benchmarks/ray_cluster_lost.py --data /tmp/cifake-test/test
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from audit.summary import read_summary  # noqa: E402 - after the path


def committed(store: Path) -> int:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM files").fetchone()[0]
    except sqlite3.Error:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--port", type=int, default=6393)
    parser.add_argument("--kill-after", type=int, default=512, help="committed files before the cluster is killed")
    args = parser.parse_args()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.setdefault("RAY_AUTH_MODE", "token")
    work = Path(tempfile.mkdtemp(prefix="ray-lost-"))
    store = work / "store.sqlite"
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                             f"--port={args.port}", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(20)  # the head comes up
        scan = subprocess.Popen([sys.executable, "-m", "audit.cli", "scan", str(args.data), "--engine", "ray",
                                 "--ray-address", f"127.0.0.1:{args.port}", "--store", str(store), "--out",
                                 str(work / "out"), "--no-report", "--no-xlsx", "-q"],
                                env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while committed(store) < args.kill_after and scan.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if scan.poll() is not None:
            raise SystemExit(f"the scan ended before the cluster was killed: {scan.stderr.read()}")
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the whole cluster, at once
    killed_at = time.monotonic()
    code = scan.wait(timeout=300)
    noticed = time.monotonic() - killed_at
    message = [line for line in scan.stderr.read().splitlines() if line.startswith("audit:")]
    print(f"scan exit code {code} (expected 6), {noticed:.1f} s after the cluster was killed")
    print("\n".join(message))
    kept = committed(store)
    print(f"files committed to the run store and kept: {kept}")
    resumed = subprocess.run([sys.executable, "-m", "audit.cli", "scan", str(args.data), "--store", str(store),
                              "--out", str(work / "resumed"), "--no-report", "--no-xlsx", "-q"], env=env, cwd=REPO)
    summary = read_summary(work / "resumed" / "summary.json")
    print(f"resumed (local engine): exit {resumed.returncode}, reused {summary.files_reused}, "
          f"scored {summary.files_scored}")


if __name__ == "__main__":
    main()
