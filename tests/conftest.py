"""Shared test settings."""

import os

import torch

# The suite's networks are tiny; one intra-op thread avoids OpenMP spin-waits fighting over
# the two cores when anything else (a training run, a second test process) is busy.
torch.set_num_threads(int(os.environ.get("AUDIT_TEST_THREADS", "1")))

import pytest


@pytest.fixture(autouse=True)
def _default_run_stores_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan without --store keeps its run store under $AUDIT_STATE_DIR (audit.store._store.state_dir):
    in the tests that is a fresh folder per test, never the user's ~/.local/state (subprocesses
    inherit the variable)."""
    monkeypatch.setenv("AUDIT_STATE_DIR", str(tmp_path_factory.mktemp("audit-state")))
