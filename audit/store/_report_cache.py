"""What the report keeps in the run store, so a nightly report redoes only what changed: Grad-CAM
maps, the gallery's pictures, and the PDF's laid-out parts.

Grad-CAM maps: a report explains only images it has not explained before.
A map depends on the image's bytes, the network's weights and the layer it is taken at, so it is
kept by (image sha256, model id, Grad-CAM layer); the model id names the weights' sha256. What is
kept is the map at the network's input size (float32, as pytorch-grad-cam returns it) and the two
logits of the same forward pass: the probability is computed from them with the card's current
temperature, so a cached map gives the very pictures a computed one would.

The gallery's pictures are kept too, by (image sha256, model id, recipe: the layer, thumbnail
size and input policy): the thumbnail and overlay as the report wrote them. Making them again
meant reading, decoding, hashing and encoding every card's file each night (docs/performance.md,
"Report"); with them kept, a card the gallery showed before costs two file
writes and the flagged files are not read at all. A card shows the bytes the scan judged (its
sha256), which is what the kept pictures are of.

And the report's laid-out parts (a section, a page of gallery cards), a PDF each, by the
fingerprint of what they show (audit.report._pdf): those of the last few renders.

The tables are caches, never the only copy of anything; they are made and migrated with the
store's other tables (audit.store._schema). Maps and pictures take a few KB an image shown at 32x32
input, about 200 KB a map at 224 (a model change adds a set of its own); `audit prune` drops
those of images no file in the store has any more.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from audit.store._schema import immediate_transaction

# Parts kept: as many as the last few renders used (a rerun with other options, a model tried).
_PARTS_KEPT = 3
# Keys per query: under SQLite's old limit of 999 parameters.
_CHUNK = 400


@dataclass(frozen=True)
class CachedMap:
    logits: np.ndarray  # float32 (classes,)
    cam: np.ndarray  # float32 (H, W) at the network's input size


@dataclass(frozen=True)
class CachedPictures:
    original_suffix: str  # "png" or "jpg"
    original: bytes
    overlay: bytes


class ReportCache:
    """The report's caches in the run store's database (an open sqlite3 connection in autocommit
    mode, as audit.store._store.RunStore keeps it; RunStore.report_cache makes one). ``hits`` and ``computed`` count this render's maps."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.hits = 0
        self.computed = 0

    def get_many(self, sha256s: Sequence[str], model_id: str, layer: str) -> dict[str, CachedMap]:
        return {sha256: CachedMap(np.frombuffer(logits, dtype=np.float32).copy(),
                                  np.frombuffer(cam, dtype=np.float32).reshape(height, width).copy())
                for sha256, logits, height, width, cam in
                self._select("sha256, logits, height, width, cam FROM heatmaps WHERE model_id = ? AND layer = ?",
                             (model_id, layer), sha256s)}

    def put_many(self, entries: Iterable[tuple[str, CachedMap]], model_id: str, layer: str) -> None:
        self._insert("heatmaps (sha256, model_id, layer, logits, height, width, cam) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [(sha256, model_id, layer, np.asarray(item.logits, dtype=np.float32).tobytes(), item.cam.shape[0],
                       item.cam.shape[1], np.ascontiguousarray(item.cam, dtype=np.float32).tobytes())
                      for sha256, item in entries if sha256])

    def get_pictures(self, sha256s: Sequence[str], model_id: str, recipe: str) -> dict[str, CachedPictures]:
        return {sha256: CachedPictures(suffix, bytes(original), bytes(overlay))
                for sha256, suffix, original, overlay in
                self._select("sha256, original_suffix, original, overlay FROM gallery_pictures "
                             "WHERE model_id = ? AND recipe = ?", (model_id, recipe), sha256s)}

    def put_pictures(self, entries: Iterable[tuple[str, CachedPictures]], model_id: str, recipe: str) -> None:
        self._insert("gallery_pictures (sha256, model_id, recipe, original_suffix, original, overlay) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     [(sha256, model_id, recipe, item.original_suffix, item.original, item.overlay)
                      for sha256, item in entries if sha256])

    def get_report_part(self, fingerprint: str) -> tuple[bytes, list] | None:
        row = self.db.execute("SELECT pdf, bookmarks FROM report_parts WHERE fingerprint = ?", (fingerprint,)).fetchone()
        return None if row is None else (bytes(row[0]), json.loads(row[1]))

    def keep_report_parts(self, new: list[tuple[str, bytes, str]], used: list[str]) -> None:
        """Add the parts just laid out, mark every part this render used, and forget all but the
        parts of the last few renders: one transaction."""
        now = time.time()
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO report_parts (fingerprint, pdf, bookmarks, kept_at) VALUES (?, ?, ?, ?)",
                                [(key, pdf, bookmarks, now) for key, pdf, bookmarks in new])
            self.db.executemany("UPDATE report_parts SET kept_at = ? WHERE fingerprint = ?", [(now, key) for key in used])
            self.db.execute("DELETE FROM report_parts WHERE fingerprint NOT IN "
                            "(SELECT fingerprint FROM report_parts ORDER BY kept_at DESC LIMIT ?)",
                            (_PARTS_KEPT * max(len(used), 1),))

    def forget_images_no_file_has(self) -> int:
        """Drop the maps and pictures of images that no file in the store has now (deleted, or
        changed since): `audit prune` does, so the caches follow the archive. Returns how many."""
        with self._transaction():
            return sum(self.db.execute(f"DELETE FROM {table} WHERE sha256 NOT IN (SELECT sha256 FROM files)").rowcount
                       for table in ("heatmaps", "gallery_pictures"))

    def _select(self, columns_and_where: str, parameters: tuple[str, ...], sha256s: Sequence[str]) -> list[tuple]:
        found: list[tuple] = []
        unique = sorted(set(sha256s))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            found += self.db.execute(f"SELECT {columns_and_where} AND sha256 IN ({','.join('?' * len(chunk))})",
                                     (*parameters, *chunk)).fetchall()
        return found

    def _insert(self, into: str, rows: list[tuple]) -> None:
        if rows:
            with self._transaction():
                self.db.executemany(f"INSERT OR REPLACE INTO {into}", rows)

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self.db)
