"""`audit scan --engine ray`: the same results as the local engine, on a real (local) Ray runtime.

One Ray runtime serves the module: ``ray.init(address="local", num_cpus=2, include_dashboard=False)``
with usage statistics off. It is shut down by ``ray.shutdown()`` at the end, never by ``ray stop``
(which would end every Ray process of the user). Its workers start with tests/crash_hook on their
PYTHONPATH, so a file holding CRASH_MARKER kills the Ray worker that decodes it, as a codec
segfault would.

Without Ray the tests that need it are skipped, except under AUDIT_REQUIRE_RAY=1 (.ci/run).
"""

from __future__ import annotations

import csv
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crash_hook.crash_marker import CRASH_MARKER, crash_on_marker
from helpers.cli import results_rows, summary_of
from scan_fixtures import jpeg_bytes, noise_image, png_bytes

from audit.config import ScanOptions
from audit.pipeline import run_scan

# Every test here starts (or shares) a local Ray runtime; starting it takes a minute on a busy 2-core machine.
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[1]
CRASH_HOOK = Path(__file__).resolve().parent / "crash_hook"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the engine needs Ray Data too
    except ImportError:
        if os.environ.get("AUDIT_REQUIRE_RAY") == "1":
            raise
        pytest.skip("Ray is not installed (pip install 'ai-image-audit[ray]')")
    return ray


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray runtime for this module; yields its GCS address (for scan subprocesses)."""
    ray = _ray()
    env = {"RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(CRASH_HOOK), str(REPO), os.environ.get("PYTHONPATH")]))}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # the runtime's workers inherit them
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             log_to_driver=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def crash_prone_archive(root: Path) -> dict[str, str]:
    """Good, broken and crashing files; returns the expected status by name.

    The crashing file comes last, alone in its batch of 4: each engine then finds it with one
    decoder death (torch notices a dead DataLoader worker only every 5 s, so a longer bisection
    would cost this test tens of seconds). A batch lost mid-run is the SIGKILL test's."""
    root.mkdir(parents=True)
    expected = {}
    for index in range(13):
        name = f"{index:02d}-good.{'png' if index % 3 == 0 else 'jpg'}"
        image = noise_image(24 + index, 20 + 2 * index, seed=index)
        (root / name).write_bytes(png_bytes(image) if name.endswith("png") else jpeg_bytes(image))
        expected[name] = "ok"
    truncated = jpeg_bytes(noise_image(64, 64, seed=99))
    broken = {"03-truncated.jpg": truncated[: len(truncated) // 2], "05-notes.jpg": b"not a picture\n",
              "09-empty.jpg": b""}
    for name, data in broken.items():
        (root / name).write_bytes(data)
        expected[name] = "error"
    # A valid JPEG that kills the decoding process (tests/crash_hook).
    (root / "zz-crash.jpg").write_bytes(jpeg_bytes(noise_image(32, 32, seed=7)) + CRASH_MARKER)
    expected["zz-crash.jpg"] = "error"
    return expected


def options(archive: Path, model: Path, out: Path, store: Path, **extra) -> ScanOptions:
    return ScanOptions(archives=(str(archive),), out_dir=out, model_path=str(model), store=store, workers=1,
                       batch_size=4, progress="none", report=False, write_xlsx=False, **extra)


def csv_without(path: Path, ignored: tuple[str, ...] = ("scanned_at",)) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return [{key: value for key, value in row.items() if key not in ignored} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def both_engines(ray_cluster, model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """The crash-prone archive scanned by the local engine and by the Ray engine."""
    base = tmp_path_factory.mktemp("engines")
    archive = base / "archive"
    expected = crash_prone_archive(archive)
    patch = pytest.MonkeyPatch()
    import audit.intake._load

    # The local engine's decode workers (and the Ray engine's local re-scoring) are forked from
    # this process: they crash on the marker too.
    patch.setattr(audit.intake._load, "load_bytes", crash_on_marker(audit.intake._load.load_bytes))
    try:
        local = run_scan(options(archive, model_path, base / "local", base / "local.sqlite"))
        on_ray = run_scan(options(archive, model_path, base / "ray", base / "ray.sqlite", engine="ray"))
    finally:
        patch.undo()
    return archive, expected, base, local, on_ray


def test_both_engines_write_the_same_csv_for_good_broken_and_crashing_files(both_engines) -> None:
    _archive, expected, base, local, on_ray = both_engines
    assert local.exit_code == on_ray.exit_code == 3  # errors are rows; the runs completed
    rows = csv_without(base / "ray" / "results.csv")
    assert rows == csv_without(base / "local" / "results.csv")  # only scanned_at may differ
    assert [row["path"] for row in rows] == sorted(expected)  # one row each, discovery order
    for row in rows:
        assert row["status"] == expected[row["path"]], row
    crashed = [row for row in rows if "decoder crashed" in row["error"]]
    assert [row["path"] for row in crashed] == ["zz-crash.jpg"]
    assert all(row["prob_ai"] for row in rows if row["status"] == "ok")


def test_the_summary_names_the_engine_the_cluster_and_the_batch_rescored_locally(both_engines) -> None:
    *_, base, _local, _on_ray = both_engines
    engine = summary_of(base / "ray").engine
    assert engine["name"] == "ray"
    assert engine["cluster"] == {"nodes": 1, "cpus": 2.0, "gpus": 0.0}
    assert engine["batches"] == 5  # 17 files in batches of 4
    # The crashing file's batch: its decode task died (retries capped), it was scored here.
    assert engine["lost_batches_rescored_locally"] == 1
    assert set(engine["seconds"]) >= {"connect", "path_check", "first_batch", "decode_tasks", "score_actors",
                                      "local_rescore"}
    assert summary_of(base / "local").engine == {"name": "local"}
    assert summary_of(base / "ray").compute["device"] == "cpu"


@pytest.mark.subprocess
def test_an_unchanged_rerun_starts_no_ray_work(both_engines, model_path: Path) -> None:
    """Nothing to score: no Ray import and no connection; an address where nothing listens proves it.

    The crashing file goes first: a file that crashed its decoder has no sha256, so, as with the
    local engine, every run tries it again."""
    archive, _expected, base, _local, _on_ray = both_engines
    (archive / "zz-crash.jpg").unlink()
    argv = ["scan", str(archive), "--model", str(model_path), "--out", str(base / "rerun"), "--store",
            str(base / "ray.sqlite"), "--batch-size", "4", "--quiet", "--no-report", "--no-xlsx", "--engine", "ray",
            "--ray-address", "127.0.0.1:9"]
    probe = ("import sys\nfrom audit.cli import main\ntry:\n"
             f"    main({argv!r})\nexcept SystemExit as exc:\n    print('exit', exc.code, 'ray' in sys.modules)\n")
    finished = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert finished.stdout.split() == ["exit", "3", "False"], finished.stderr  # 3: the broken files' rows
    summary = summary_of(base / "rerun")
    assert (summary.files_scored, summary.files_reused) == (0, 16)
    assert csv_without(base / "rerun" / "results.csv") == [
        row for row in csv_without(base / "ray" / "results.csv") if row["path"] != "zz-crash.jpg"]


def test_a_node_that_cannot_see_a_file_is_named_before_anything_is_scored(ray_cluster, model_path: Path) -> None:
    from audit.config import ScanOptions
    from audit.engines import EngineRequest, create_engine
    from audit.engines.ray import RayUnavailable
    from audit.intake import FileRecord, LoadOptions
    from audit.model import load_model

    missing = "/nonexistent-archive/2024/photo.jpg"
    options = ScanOptions(archives=("/nonexistent-archive",), engine="ray", batch_size=4)
    engine = create_engine(EngineRequest(load_model(model_path, lazy=True), LoadOptions(), options))
    with pytest.raises(RayUnavailable, match=f"does not see {missing}: every node must see the archive"):
        engine.start([FileRecord(root="/nonexistent-archive", rel_path="2024/photo.jpg", abs_path=missing, size=1,
                                 mtime=0.0)])


def committed_files(store: Path) -> int:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM files").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet, or busy
        return 0


@pytest.mark.subprocess
def test_sigkill_of_the_driver_then_a_rerun_loses_and_duplicates_nothing(ray_cluster, model_path: Path,
                                                                         tmp_path: Path) -> None:
    """Also a batch lost mid-run: one file crashes the Ray workers that decode it (their
    sitecustomize) but not this process, so the rerun's driver scores that batch itself, in place."""
    archive, store, total = tmp_path / "archive", tmp_path / "store.sqlite", 600
    archive.mkdir()
    for index in range(total):
        data = jpeg_bytes(noise_image(32, 32, seed=index))
        (archive / f"{index:04d}.jpg").write_bytes(data + CRASH_MARKER if index == 450 else data)
    command = [sys.executable, "-m", "audit.cli", "scan", str(archive), "--model", str(model_path), "--out",
               str(tmp_path / "killed"), "--store", str(store), "--batch-size", "8", "--quiet", "--no-report",
               "--no-xlsx", "--engine", "ray", "--ray-address", ray_cluster]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("RAY_AUTH_MODE", "token")  # the local runtime wrote its token to ~/.ray; a second driver sends it
    process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while committed_files(store) < 8:  # at least one batch committed by the driver
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        process.kill()  # SIGKILL: no clean-up of any kind
        process.wait(timeout=60)
    committed = committed_files(store)
    assert 8 <= committed < total, committed  # killed mid-run
    assert not (tmp_path / "killed" / "summary.json").exists()

    resumed = run_scan(options(archive, model_path, tmp_path / "resumed", store, engine="ray"))
    assert resumed.exit_code == 0
    summary = resumed.summary
    assert (summary.files_reused, summary.files_scored) == (committed, total - committed)
    assert summary.engine["lost_batches_rescored_locally"] == 1
    rows = results_rows(tmp_path / "resumed")
    assert [row["path"] for row in rows] == sorted(path.name for path in archive.iterdir())  # each once, in order

    reference = run_scan(options(archive, model_path, tmp_path / "reference", tmp_path / "other.sqlite"))
    assert reference.exit_code == 0
    assert csv_without(tmp_path / "resumed" / "results.csv") == csv_without(tmp_path / "reference" / "results.csv")


@pytest.mark.subprocess
def test_without_ray_the_engine_exits_2_and_names_the_install_command(tmp_path: Path, model_path: Path) -> None:
    """Ray made unimportable in a fresh process (sys.modules['ray'] = None), as on an install without it."""
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "a.jpg").write_bytes(jpeg_bytes(noise_image(32, 32)))
    argv = ["scan", str(archive), "--model", str(model_path), "--out", str(tmp_path / "out"), "--store",
            str(tmp_path / "store.sqlite"), "--quiet", "--no-report", "--engine", "ray"]
    probe = f"import sys\nsys.modules['ray'] = None\nfrom audit.cli import main\nmain({argv!r})\n"
    finished = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2, finished.stderr
    assert "pip install 'ai-image-audit[ray]'" in finished.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "store.sqlite").exists()  # nothing written
