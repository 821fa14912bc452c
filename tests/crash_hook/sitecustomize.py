"""Test-only: in every Python process started with this folder on PYTHONPATH (the Ray workers of
the tests' cluster, scan subprocesses), decoding a file whose bytes hold CRASH_MARKER kills the
process with SIGSEGV, as a fault in native image-decoding code would.

The patch is applied when ``audit.intake._load`` is first imported, so processes that never decode
pay nothing. tests/test_ray_engine.py applies the same patch to the test process itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

from crash_marker import crash_on_marker


class _PatchAuditLoading(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "audit.intake._load":
            return None
        sys.meta_path.remove(self)  # find the real module, then wrap its loader once
        spec = importlib.util.find_spec(name)
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            module.load_bytes = crash_on_marker(module.load_bytes)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchAuditLoading())
