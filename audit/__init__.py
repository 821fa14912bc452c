"""Audit image archives for AI-generated images.

The packages are the stages of a scan: ``intake`` (discover, load), ``engines`` (score),
``pipeline`` (the run: rows, sinks, summary), ``store``, ``review``, ``report``, with ``model``
and ``evidence`` beside them and ``cli`` on top; docs/architecture.md walks one row through them.
"""

from __future__ import annotations

import importlib
from typing import Callable

__version__ = "0.1.0"


def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], object]:
    """A package's ``__getattr__`` that imports ``table[name]``'s module when the name is first
    asked for: names whose modules pull in torch, pandas or OpenCV cost nothing until used."""

    def __getattr__(name: str) -> object:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
