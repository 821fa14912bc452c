"""Grad-CAM maps kept in the run store, so a nightly report explains only images it has not
explained before.

A map depends on the image's bytes, the network's weights and the layer it is taken at, so it is
kept by (image sha256, model id, Grad-CAM layer); the model id names the weights' sha256. What is
kept is the map at the network's input size (float32, as pytorch-grad-cam returns it) and the two
logits of the same forward pass: the probability is computed from them with the card's current
temperature, and the thumbnail and overlay are made again from the file (they are cheap, and the
file must be read anyway to show it), so a cached map gives the very pictures a computed one
would.

The table is a cache beside the run store's own tables: created when first needed, ignored by
an audit that does not know it, and never the only copy of anything, so it needs no schema
version of its own (audit.store).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

_TABLE = """
CREATE TABLE IF NOT EXISTS heatmaps (
    sha256 TEXT NOT NULL,
    model_id TEXT NOT NULL,
    layer TEXT NOT NULL,
    logits BLOB NOT NULL,   -- float32 values of the forward pass that made the map
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    cam BLOB NOT NULL,      -- float32 height x width, values in [0, 1]
    PRIMARY KEY (sha256, model_id, layer)
)
"""
# Keys per query: under SQLite's old limit of 999 parameters.
_CHUNK = 400


@dataclass(frozen=True)
class CachedMap:
    logits: np.ndarray  # float32 (classes,)
    cam: np.ndarray  # float32 (H, W) at the network's input size


class HeatmapCache:
    """Grad-CAM maps in the run store's database (an open sqlite3 connection in autocommit mode,
    as audit.store.RunStore keeps it). ``hits`` and ``computed`` count this render's use."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.execute(_TABLE)
        self.hits = 0
        self.computed = 0

    def get_many(self, sha256s: Sequence[str], model_id: str, layer: str) -> dict[str, CachedMap]:
        found: dict[str, CachedMap] = {}
        unique = sorted(set(sha256s))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            rows = self.db.execute(
                f"SELECT sha256, logits, height, width, cam FROM heatmaps WHERE model_id = ? AND layer = ? "
                f"AND sha256 IN ({','.join('?' * len(chunk))})", (model_id, layer, *chunk)).fetchall()
            for sha256, logits, height, width, cam in rows:
                found[sha256] = CachedMap(np.frombuffer(logits, dtype=np.float32).copy(),
                                          np.frombuffer(cam, dtype=np.float32).reshape(height, width).copy())
        return found

    def put_many(self, entries: Iterable[tuple[str, CachedMap]], model_id: str, layer: str) -> None:
        rows = [(sha256, model_id, layer, np.asarray(item.logits, dtype=np.float32).tobytes(), item.cam.shape[0],
                 item.cam.shape[1], np.ascontiguousarray(item.cam, dtype=np.float32).tobytes())
                for sha256, item in entries if sha256]
        if not rows:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT OR REPLACE INTO heatmaps (sha256, model_id, layer, logits, height, width, cam) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
