"""Test-only: a decoder that dies with SIGSEGV on files holding CRASH_MARKER (see sitecustomize.py)."""

from __future__ import annotations

import os
import signal

CRASH_MARKER = b"AUDIT-TEST-SEGFAULT"


def crash_on_marker(load_bytes):
    """Wrap audit.intake._load.load_bytes: a file holding the marker kills the process decoding it."""

    def load_bytes_or_segfault(data, options, result):
        if CRASH_MARKER in data:
            os.kill(os.getpid(), signal.SIGSEGV)
        return load_bytes(data, options, result)

    return load_bytes_or_segfault
