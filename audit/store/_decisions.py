"""The SQL of reviewers' decisions (the ``decisions`` table) and of the lookups a review makes in
the store's results; audit.review turns these rows into its records."""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, Sequence

from audit.store._lock import utc_text
from audit.store._store import RunStore

# Lookups per query: under SQLite's old limit of 999 parameters.
_CHUNK = 500


def current_decision_rows(store: RunStore) -> Iterator[tuple[Any, ...]]:
    """Every decision as a plain tuple (sha256, decision, decided_by, decided_at, note, model_id,
    prob_ai, id), oldest first: on every nightly run's path, so no row objects."""
    cursor = store.db.cursor()
    cursor.row_factory = None
    yield from cursor.execute("SELECT sha256, decision, decided_by, decided_at, note, model_id, prob_ai, id "
                              "FROM decisions ORDER BY id")


def review_cell_rows(store: RunStore) -> Iterator[tuple[Any, ...]]:
    """Every decision as (id, sha256, decision, note, decided_by, decided_at, model_id), oldest
    first, in one query (so the cells and the newest id agree while reviewers record more)."""
    cursor = store.db.cursor()
    cursor.row_factory = None
    yield from cursor.execute("SELECT id, sha256, decision, note, decided_by, decided_at, model_id "
                              "FROM decisions ORDER BY id")


def decision_history_rows(store: RunStore, sha256: str) -> list[Any]:
    """Every decision recorded for these bytes, oldest first (rows readable by column name)."""
    return store.db.execute("SELECT * FROM decisions WHERE sha256 = ? ORDER BY id", (sha256,)).fetchall()


def append_decisions(store: RunStore, rows: Sequence[tuple[Any, ...]]) -> None:
    """Append (sha256, decision, decided_by, decided_at, note, model_id, prob_ai, source) rows in
    one transaction: all of them reach the store, or none."""
    recorded_at = utc_text()
    with store._transaction() as db:  # noqa: SLF001 - the store's one way to write atomically
        db.executemany(
            "INSERT INTO decisions (sha256, decision, decided_by, decided_at, recorded_at, note, model_id, prob_ai, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(sha256, decision, by, at, recorded_at, note, model_id, prob_ai, source)
             for sha256, decision, by, at, note, model_id, prob_ai, source in rows])


def first_recorded_from(store: RunStore, source_prefix: str) -> str | None:
    """When a decision whose source starts with ``source_prefix`` first reached the store."""
    return store.db.execute("SELECT min(recorded_at) FROM decisions WHERE source LIKE ?",
                            (source_prefix.replace("%", "") + "%",)).fetchone()[0]


def reviewed_sha256s_starting(store: RunStore, prefix: str, limit: int = 2) -> list[str]:
    """Up to ``limit`` reviewed sha256s that start with ``prefix`` (lower-case hex)."""
    return [row[0] for row in store.db.execute(
        "SELECT DISTINCT sha256 FROM decisions WHERE sha256 >= ? AND sha256 < ? LIMIT ?", (prefix, prefix + "g", limit))]


def stored_results(store: RunStore, sha256s: Iterable[str]) -> dict[str, dict[str, float | None]]:
    """For each of ``sha256s`` that some run scored into this store: prob_ai by model id, the
    newest result first (so the first key is the model that judged these bytes last)."""
    wanted, found = sorted(set(sha256s)), {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = store.db.execute(f"SELECT sha256, model_id, row_json FROM scores WHERE sha256 IN ({marks}) "
                                "ORDER BY scored_run DESC", chunk)
        for sha256, model_id, row_json in rows:
            found.setdefault(sha256, {}).setdefault(model_id, json.loads(row_json).get("prob_ai"))
    return found


def latest_result(store: RunStore, sha256: str) -> tuple[str, float | None] | None:
    """(model id, prob_ai) of the newest stored result for these bytes; None: never scanned."""
    row = store.db.execute("SELECT model_id, row_json FROM scores WHERE sha256 = ? ORDER BY scored_run DESC LIMIT 1",
                           (sha256,)).fetchone()
    if row is None:
        return None
    return row[0], json.loads(row[1]).get("prob_ai")


def paths_by_sha256(store: RunStore) -> dict[str, str]:
    """One path the last runs saw for each sha256 (to name a decision's file in listings)."""
    return {row[0]: row[1] for row in store.db.execute("SELECT sha256, path FROM files WHERE sha256 != '' ORDER BY path DESC")}
