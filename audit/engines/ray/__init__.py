"""The Ray engine: the local engine's contract on a Ray cluster (decode tasks, scoring actors,
the head watchdog that turns a lost cluster into :class:`audit.errors.EngineLost`).
"""

from __future__ import annotations

from audit import lazy_exports

# Imported when first asked for: these pull in torch, pandas or OpenCV.
_LAZY = {
    "RayUnavailable": "audit.engines.ray._cluster",
    "RayEngine": "audit.engines.ray._engine",
    "RaySettings": "audit.engines.ray._engine",
    "check_settings": "audit.engines.ray._engine",
    "engine_settings": "audit.engines.ray._engine",
}

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = ["RayEngine", "RaySettings", "RayUnavailable", "check_settings", "engine_settings"]
