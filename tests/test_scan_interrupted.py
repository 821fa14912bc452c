"""A scan stopped with SIGTERM (how a nightly job is stopped) leaves complete outputs or none."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scan_fixtures import jpeg_bytes, noise_image

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

REPO = Path(__file__).resolve().parents[1]

# Workers and the whole process group too: `systemctl stop` signals every process of the unit.
@pytest.mark.parametrize("workers, whole_group", [(0, False), (2, True)])
def test_sigterm_mid_scan_leaves_no_partial_outputs(tmp_path: Path, model_path: Path, workers: int, whole_group: bool) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "0.jpg").write_bytes(jpeg_bytes(noise_image(32, 32)))
    for i in range(1, 3000):  # hard links: a large archive that costs no disk
        os.link(archive / "0.jpg", archive / f"{i}.jpg")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "audit.cli", "scan", str(archive), "--model", str(model_path),
               "--out", str(out), "--workers", str(workers), "--batch-size", "8", "--quiet", "--no-report"]
    process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "results.csv.tmp").exists():  # the scan has started writing rows
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    if whole_group:
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM, process.stderr.read().decode()
    # torch reports a decode worker killed by the signal as "DataLoader worker ... exited unexpectedly"
    assert b"exited unexpectedly" not in process.stderr.read()
    assert sorted(p.name for p in out.iterdir()) == []  # neither partial nor temporary files
