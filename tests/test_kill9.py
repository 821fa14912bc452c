"""A scan killed with SIGKILL (the OOM killer, a node drain, a timeout) while its decode workers
run: no process of it survives, and the next run is not locked out. It once was: the orphaned
DataLoader workers lived on for minutes and held the store's flock through an inherited
descriptor, so every later night was refused."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cli import count_in_store, results_rows, summary_of
from scan_fixtures import jpeg_bytes, noise_image

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[1]


def live_processes_in_group(pgid: int) -> list[int]:
    """Pids of the processes (not zombies: those hold nothing and run nothing) in a process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            found.append(int(entry.name))
    return found


def scan_command(archive: Path, model: Path, out: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "audit.cli", "scan", str(archive), "--model", str(model), "--out", str(out),
            "--store", str(store), "--workers", "2", "--batch-size", "8", "--no-xlsx", "--quiet", *extra]


def test_sigkill_with_workers_leaves_no_process_and_the_rerun_takes_over(tmp_path: Path, model_path: Path) -> None:
    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    archive.mkdir()
    count = 200  # distinct images, so that "reused" counts stored scores, not duplicates
    for index in range(count):
        (archive / f"{index:04d}.jpg").write_bytes(jpeg_bytes(noise_image(32, 32, seed=index)))

    killed = subprocess.Popen(scan_command(archive, model_path, tmp_path / "killed", store), cwd=REPO,
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        # Scoring, with its 2 workers up.
        while count_in_store(store, "files") < 24 or len(live_processes_in_group(killed.pid)) < 3:
            assert killed.poll() is None, killed.stderr.read().decode()
            assert time.monotonic() < deadline, "the scan did not get going"
            time.sleep(0.02)
    finally:
        killed.send_signal(signal.SIGKILL)  # the main process only, as the OOM killer does
        killed.wait(timeout=60)
    committed = count_in_store(store, "files")
    assert 24 <= committed < count, committed  # killed mid-run

    # At once, while any orphan would still be there: the next night must not be locked out.
    rerun = subprocess.Popen(scan_command(archive, model_path, tmp_path / "rerun", store, "--no-report"), cwd=REPO,
                             stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while (left := live_processes_in_group(killed.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left == [], f"processes of the killed run still alive 10 s later: {left}"
        _, stderr = rerun.communicate(timeout=300)
    finally:
        if rerun.poll() is None:
            rerun.kill()
    assert rerun.returncode == 0, stderr.decode()
    assert f"was left by pid {killed.pid} " in stderr.decode() and "took the store over" in stderr.decode()

    summary = summary_of(tmp_path / "rerun")
    rows = results_rows(tmp_path / "rerun")
    assert sorted(row["path"] for row in rows) == sorted(f"{index:04d}.jpg" for index in range(count))  # each once
    assert all(row["status"] == "ok" for row in rows)
    assert (summary.files_reused, summary.files_scored) == (committed, count - committed)  # from the store
    assert str(killed.pid) in summary.store.lock_takeover
    assert live_processes_in_group(rerun.pid) == []
