"""The report's gallery: a card for each flagged image that still awaits a reviewer, with its
thumbnail and Grad-CAM overlay, and one line for each flagged image reviewers already decided.

Only the gallery needs the model and the image files: an image that has gone or changed since
the scan is said so in its card (when its pictures are made from the file; a scan's report takes
the pictures of a card shown before from the run store, made from the very bytes it judged). Output names are the rank only: nothing from the archive names
a file on disk.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

import audit
from audit.model import LoadedModel, route_index, route_policies
from audit.report._data import RunData, flagged_rows, review_states, uncertain_rows
from audit.report._pictures import OVERLAY_ALPHA, THUMBNAIL_SIZE, save_image
from audit.review import cleared_under_other_model
from audit.store import CachedPictures, ReportCache

if TYPE_CHECKING:  # audit.report._explain imports torch (slow): only a card with no kept pictures needs it
    from audit.report._explain import Explanation

DEFAULT_MAX_GALLERY = 200
# Evidence text comes from file metadata: bounded before it reaches the page.
MAX_EVIDENCE_LINES = 8
MAX_EVIDENCE_CHARS = 300
# The decided images listed after the cards; results.csv (and `audit review list`) has them all.
MAX_DECIDED_LISTED = 500
# Uncertain images shown as cards (at most --max-gallery too); results.csv lists them all.
MAX_UNCERTAIN_CARDS = 100


@dataclass(frozen=True)
class GalleryItem:
    rank: int
    path: str  # as in results.csv (relative to its root); shown escaped
    root: str
    prob_ai: float
    width: int | None
    height: int | None
    n_bytes: int | None
    sha256_prefix: str
    true_label: str
    evidence_lines: tuple[str, ...]
    evidence_source: str
    threshold: float | None  # the model's threshold, shown beside its score
    verdict_reason: str  # "model", or the declaration of AI generation that flagged the image
    original_src: str | None  # relative URL under heatmaps/, None when not available
    overlay_src: str | None
    problem: str = ""  # why there is no heatmap, or that the file changed since the scan
    review: ReviewFacts | None = None  # the decision recorded on these bytes, if any


@dataclass(frozen=True)
class ReviewFacts:
    """A reviewer's decision as the page shows it, and what its buttons export."""

    sha256: str
    model_id: str  # the model of this run (what the reviewer sees now)
    prob_ai: float | None
    decision: str = ""  # confirmed-ai | false-positive | unsure | "" (none yet)
    note: str = ""
    by: str = ""
    at: str = ""
    cleared_under: str = ""  # the other model under which it was cleared; this one flags it again


@dataclass(frozen=True)
class DecidedItem:
    """A flagged image that reviewers confirmed or cleared: one line, after the cards."""

    path: str
    prob_ai: float
    review: ReviewFacts


def review_facts(row: pd.Series) -> ReviewFacts:
    verdict, model_id = str(row.get("verdict", "")), str(row.get("model_id", ""))
    decision, decided_model = str(row.get("review", "")), str(row.get("review_model_id", ""))
    return ReviewFacts(
        sha256=str(row.get("sha256", "")), model_id=model_id, prob_ai=_float_or_none(row.get("prob_ai")),
        decision=decision, note=str(row.get("review_note", "")), by=str(row.get("reviewed_by", "")),
        at=str(row.get("reviewed_at", "")),
        cleared_under=decided_model if cleared_under_other_model(verdict, model_id, decision, decided_model) else "",
    )


def decided_items(frame: pd.DataFrame) -> tuple[list[DecidedItem], int]:
    """The flagged images reviewers confirmed or cleared, confirmed first, most confident first."""
    # Only rows with a decision can be confirmed or cleared: the few, not a sorted copy of every flagged row.
    flagged = flagged_rows(frame[frame["review"] != ""])
    states = pd.Series(review_states(flagged), index=flagged.index, dtype=object)
    decided = pd.concat([flagged[states == "confirmed"], flagged[states == "cleared"]])
    items = [DecidedItem(path=str(row["path"]), prob_ai=float(row["prob_ai"]), review=review_facts(row))
             for _, row in decided.head(MAX_DECIDED_LISTED).iterrows()]
    return items, len(decided)


def evidence_lines(text: str) -> tuple[str, ...]:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    kept = [line if len(line) <= MAX_EVIDENCE_CHARS else line[: MAX_EVIDENCE_CHARS - 1] + "…" for line in lines]
    if len(kept) > MAX_EVIDENCE_LINES:
        kept = kept[:MAX_EVIDENCE_LINES] + [f"(+{len(kept) - MAX_EVIDENCE_LINES} more lines in results.csv)"]
    return tuple(kept)


def _float_or_none(value: Any) -> float | None:
    return None if value is None or value == "" or (isinstance(value, float) and math.isnan(value)) else float(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


def write_gallery_images(result: Explanation, heatmap_dir: Path, stem: str) -> tuple[str, str]:
    """Write the thumbnail and the overlay; return their URLs relative to the report.

    A small image enlarged to the thumbnail is blocks of repeated pixels: PNG keeps them exact
    and small. A reduced photo, and every overlay (smooth colours), are JPEG: a third of the
    PNG's size, which is what keeps a 200-image PDF at a few MB.
    """
    original_format, original_suffix = ("PNG", "png") if result.enlarged else ("JPEG", "jpg")
    # An image judged through several crops shows each crop's box and score on its picture.
    shown = result.crop_picture if result.crop_picture is not None else result.thumbnail
    original = save_image(shown, heatmap_dir / f"{stem}-original.{original_suffix}", original_format)
    overlay = save_image(result.overlay, heatmap_dir / f"{stem}-gradcam.jpg", "JPEG")
    return f"heatmaps/{original.name}", f"heatmaps/{overlay.name}"


@dataclass(frozen=True)
class GalleryPictures:
    """What Grad-CAM made of one gallery image now: the sha256 of the bytes it judged, and the
    URLs (relative to the report) of the thumbnail and of the overlay."""

    sha256: str
    original_src: str
    overlay_src: str


def build_gallery(
    run: RunData, model: LoadedModel | None, model_problem: str, heatmap_dir: Path, max_gallery: int,
    report_cache: ReportCache | None = None,
) -> tuple[list[GalleryItem], int]:
    """Write thumbnails and Grad-CAM overlays of the flagged images; return the gallery items
    and how many images are flagged in all.

    Images are explained in batches as they stream by, so memory does not grow with the
    gallery. Output names are the rank only: nothing from the archive names a file on disk.
    """
    # The order and the states from the columns they need; whole rows only for the cards.
    flagged = flagged_rows(run.results[["verdict", "status", "prob_ai", "model_id", "review", "review_model_id"]])
    rows = [run.results.loc[index] for index in awaiting_rows(flagged, max_gallery)]
    return gallery_cards(run, rows, model, model_problem, heatmap_dir, report_cache, "g"), len(flagged)


def build_uncertain_gallery(run: RunData, model: LoadedModel | None, model_problem: str, heatmap_dir: Path,
                            max_cards: int, report_cache: ReportCache | None = None) -> tuple[list[GalleryItem], int]:
    """Cards for the uncertain images no reviewer has decided (at most ``max_cards``, the most
    likely AI-generated first), and how many images are uncertain in all."""
    uncertain = uncertain_rows(run.results)
    undecided = uncertain[~uncertain["review"].isin(("confirmed-ai", "false-positive"))]
    rows = [row for _, row in undecided.head(max(0, max_cards)).iterrows()]
    return gallery_cards(run, rows, model, model_problem, heatmap_dir, report_cache, "u"), len(uncertain)


def gallery_cards(run: RunData, rows: list[pd.Series], model: LoadedModel | None, model_problem: str,
                  heatmap_dir: Path, report_cache: ReportCache | None, prefix: str) -> list[GalleryItem]:
    """One card a row, its pictures named ``PREFIX####`` under heatmap_dir."""
    explained = explain_rows(run, rows, model, heatmap_dir, report_cache, prefix) if model is not None else {}
    items = []
    for index, row in enumerate(rows):
        outcome = explained.get(index)
        pictures = outcome if isinstance(outcome, GalleryPictures) else None
        if model is None:
            problem = f"no Grad-CAM: the model is not available ({model_problem})"
        elif pictures is None:
            problem = f"no Grad-CAM: the file cannot be read now ({outcome})"
        else:
            problem = changed_since_scan(str(row.get("sha256", "")), pictures.sha256)
        items.append(gallery_item(index + 1, row, pictures, problem))
    return items


def awaiting_rows(flagged: pd.DataFrame, max_gallery: int) -> list[Any]:
    """The index of the first ``max_gallery`` flagged rows that still need a reviewer: they get
    cards; the decided ones are listed compactly after them (decided_items)."""
    awaiting = flagged[[state == "awaiting" for state in review_states(flagged)]]
    return list(awaiting.index[: max(0, max_gallery)])


def picture_recipe(model: LoadedModel) -> str:
    """What shapes a card's pictures besides the image and the weights (the cache's key): the
    card's layer and input policy, and the code that draws them (this version of the audit and
    of pytorch-grad-cam), so a change to either makes them again."""
    card = model.card
    return json.dumps({"layer": card.gradcam_layer, "thumbnail": THUMBNAIL_SIZE, "overlay_alpha": OVERLAY_ALPHA,
                       "crop_boxes": card.threshold,  # the boxes' colours follow the threshold
                       "preprocessing": dataclasses.asdict(card.preprocessing), "audit": audit.__version__,
                       "grad-cam": _distribution_version("grad-cam")}, sort_keys=True)


def _distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def explain_rows(run: RunData, rows: list[pd.Series], model: LoadedModel, heatmap_dir: Path,
                 report_cache: ReportCache | None, prefix: str = "g") -> dict[int, GalleryPictures | str]:
    """Grad-CAM of each row's image, by its index in ``rows``: its pictures, or why there are none.

    An image the card routes by size is explained by the network that scored it. With
    ``report_cache``, a card whose pictures it keeps (by the sha256 the scan judged) gets them
    from there; only the others' files are read and explained, and their pictures kept.
    """
    paths = {index: run.image_path(row) for index, row in enumerate(rows)}
    explained: dict[int, GalleryPictures | str] = {
        index: "its path leads outside its archive root" for index, path in paths.items() if path is None
    }
    policies = route_policies(model.routes)
    by_route: dict[int, list[int]] = {}
    for index, path in paths.items():
        if path is not None:
            route = route_index(_int_or_none(rows[index].get("width")), _int_or_none(rows[index].get("height")), policies)
            by_route.setdefault(route, []).append(index)
    for route, indices in sorted(by_route.items()):
        explained.update(_explain_with(model.scored_by(route), rows, {i: paths[i] for i in indices}, heatmap_dir,
                                       report_cache, prefix))
    return explained


def _explain_with(model: LoadedModel, rows: list[pd.Series], paths: dict[int, Path], heatmap_dir: Path,
                  report_cache: ReportCache | None, prefix: str) -> dict[int, GalleryPictures | str]:
    explained: dict[int, GalleryPictures | str] = {}
    scanned = {index: str(rows[index].get("sha256", "")) for index in paths}
    recipe = picture_recipe(model)
    kept = report_cache.get_pictures(list(scanned.values()), model.model_id, recipe) if report_cache else {}
    for index, sha256 in scanned.items():
        if sha256 in kept:
            explained[index] = write_kept_pictures(kept[sha256], heatmap_dir, f"{prefix}{index + 1:04d}", sha256)
    readable = [(index, paths[index]) for index in scanned if index not in explained]
    if not readable:
        return explained
    from audit.report._explain import Explanation, GradCamExplainer

    made: dict[str, CachedPictures] = {}
    with GradCamExplainer(model) as explainer:
        results = explainer.explain_paths([path for _, path in readable], THUMBNAIL_SIZE, report_cache)
        for (index, _), result in zip(readable, results):
            if isinstance(result, Explanation):
                pictures = GalleryPictures(result.sha256, *write_gallery_images(result, heatmap_dir, f"{prefix}{index + 1:04d}"))
                explained[index] = pictures
                if report_cache is not None and result.sha256 == scanned[index]:  # the bytes the scan judged: kept
                    made[result.sha256] = read_pictures(pictures, heatmap_dir)
            else:
                explained[index] = result.error
    if report_cache is not None:
        report_cache.put_pictures(made.items(), model.model_id, recipe)
    return explained


def write_kept_pictures(kept: CachedPictures, heatmap_dir: Path, stem: str, sha256: str) -> GalleryPictures:
    """A card's pictures from the cache, under this render's names (heatmap_dir is a fresh folder)."""
    original, overlay = heatmap_dir / f"{stem}-original.{kept.original_suffix}", heatmap_dir / f"{stem}-gradcam.jpg"
    original.write_bytes(kept.original)
    overlay.write_bytes(kept.overlay)
    return GalleryPictures(sha256, f"heatmaps/{original.name}", f"heatmaps/{overlay.name}")


def read_pictures(pictures: GalleryPictures, heatmap_dir: Path) -> CachedPictures:
    original = heatmap_dir / Path(pictures.original_src).name
    overlay = heatmap_dir / Path(pictures.overlay_src).name
    return CachedPictures(original.suffix.lstrip("."), original.read_bytes(), overlay.read_bytes())


def changed_since_scan(scanned_sha256: str, judged_sha256: str) -> str:
    """The card's warning when the bytes explained now are not those the scan judged ("" if they are)."""
    return "" if judged_sha256 == scanned_sha256 or not scanned_sha256 else "the file has changed since the scan (sha256 differs)"


def gallery_item(rank: int, row: pd.Series, pictures: GalleryPictures | None, problem: str) -> GalleryItem:
    """One card: the row's facts as results.csv has them, and the pictures made now."""
    sha256 = str(row.get("sha256", ""))
    return GalleryItem(
        rank=rank,
        path=str(row["path"]),
        root=str(row.get("root", "")),
        prob_ai=float(row["prob_ai"]),
        width=_int_or_none(row.get("width")),
        height=_int_or_none(row.get("height")),
        n_bytes=_int_or_none(row.get("bytes")),
        sha256_prefix=sha256[:16],
        true_label=str(row.get("true_label", "")),
        evidence_lines=evidence_lines(row.get("evidence", "")),
        evidence_source=str(row.get("evidence_source", "")),
        threshold=_float_or_none(row.get("threshold")),
        verdict_reason=str(row.get("verdict_reason", "")),
        original_src=pictures.original_src if pictures else None,
        overlay_src=pictures.overlay_src if pictures else None,
        problem=problem,
        review=review_facts(row),
    )
