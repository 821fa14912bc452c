"""Shared test settings and fixtures; the helpers the test files import are in tests/helpers/ and
tests/scan_fixtures.py, run_fixture.py, synthetic_detector.py."""

import os

import torch

# The suite's networks are tiny; one intra-op thread avoids OpenMP spin-waits fighting over
# the two cores when anything else (a training run, a second test process) is busy.
torch.set_num_threads(int(os.environ.get("AUDIT_TEST_THREADS", "1")))

from pathlib import Path

import pytest
from scan_fixtures import make_model


@pytest.fixture(autouse=True)
def _default_run_stores_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan without --store keeps its run store under $AUDIT_STATE_DIR (audit.store._store.state_dir):
    in the tests that is a fresh folder per test, never the user's ~/.local/state (subprocesses
    inherit the variable)."""
    monkeypatch.setenv("AUDIT_STATE_DIR", str(tmp_path_factory.mktemp("audit-state")))

@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")

@pytest.fixture(scope="session")
def model_path(model_dir: Path) -> Path:
    """A randomly initialised model, made once for the session."""
    return make_model(model_dir)
