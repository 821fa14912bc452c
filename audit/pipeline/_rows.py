"""A scored file -> its result row: the verdict rule applied, the evidence cells filled."""

from __future__ import annotations

from audit.engines import Scored
from audit.evidence import evidence_cell, evidence_sources
from audit.model import LoadedModel, uncertain_reason
from audit.rows import STATUS_ERROR, STATUS_OK, ResultRow
from audit.verdicts import VERDICT_ERROR, judge


def make_row(scored: Scored, true_label: str, model: LoadedModel, scanned_at: str) -> ResultRow:
    result, record = scored.result, scored.result.record
    # A routed image is judged by the model its size sent it to, at that model's threshold.
    scorer = model.scored_by(result.route)
    threshold = scorer.card.threshold
    note = result.note
    if result.route:
        route = model.routes[result.route - 1][0]
        note = "; ".join(filter(None, [note, f"scored by {scorer.model_id} (longer side <= {route.max_side} px)"]))
    row = ResultRow(
        path=record.rel_path,
        root=record.root,
        sha256=result.sha256,
        bytes=result.n_bytes,
        format=result.format,
        width=result.width,
        height=result.height,
        threshold=threshold,
        true_label=true_label,
        model_id=model.model_id,
        scanned_at=scanned_at,
        note=note,
    )
    if scored.prob_ai is None:
        row.status, row.error, row.verdict = STATUS_ERROR, result.error or "not scored", VERDICT_ERROR
    else:
        row.status, row.prob_ai = STATUS_OK, scored.prob_ai
        row.novelty = round(scored.novelty, 4) if scored.novelty is not None else None
        uncertain = uncertain_reason(scored.prob_ai, threshold, scorer.card.uncertainty, scored.novelty,
                                     scored.prob_degraded)
        # prob_ai stays the model's; a declaration of AI generation can still flag the image.
        decision = judge(scored.prob_ai, threshold, result.evidence, uncertain)
        row.verdict = decision.verdict
        row.verdict_reason = decision.reason
    row.evidence, row.evidence_source = evidence_cell(result.evidence), evidence_sources(result.evidence)
    return row
