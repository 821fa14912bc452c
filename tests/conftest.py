"""Shared test settings."""

import os

import torch

# The suite's networks are tiny; one intra-op thread avoids OpenMP spin-waits fighting over
# the two cores when anything else (a training run, a second test process) is busy.
torch.set_num_threads(int(os.environ.get("AUDIT_TEST_THREADS", "1")))
