"""The explain stage: flagged images -> Grad-CAM heatmaps, overlay thumbnails and each crop's own score.

Grad-CAM (Selvaraju et al., 2017) weights the feature maps of one convolutional layer by the
gradient of the "ai-generated" logit, so the map says which regions of the *network input*
raised that logit. It comes from the pytorch-grad-cam package (PyPI ``grad-cam``), used as a
context manager so that its forward hooks are removed when the work is done.

The layer is the one the model card names (``card.gradcam_layer``): for resnet18-s1stem at
32x32 input that is ``layer3``, a 4x4 map; ``layer4`` would be 2x2, too coarse to point at
anything. The map is computed on the 32x32 input that the detector judged, then stretched back
over the whole thumbnail, because the input is the whole image squashed (resize policy
"squash"): a cell of the map covers the same fraction of the picture in both.

Reading the files, thumbnails and overlays are audit.report._pictures'; the ``audit explain`` command
is in audit.cli._app.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from audit.evidence import Finding
from audit.model import (
    AI_CLASS_INDEX,
    LoadedModel,
    ModelError,
    Preprocessing,
    crop_boxes,
    crops_scale,
    load_model,
    normalize,
    shorter_side_to,
)
from audit.report import _pictures as pictures
from audit.report._pictures import (
    THUMBNAIL_SIZE,
    CropScore,
    LoadedPicture,
    draw_crop_boxes,
    overlay_heatmap,
    upsample_heatmap,
)
from audit.store import CachedMap, ReportCache

# Images per Grad-CAM forward and backward pass (the scan's batch is audit.model._compute's).
GRADCAM_BATCH_SIZE = 32


@dataclass(frozen=True)
class Explanation:
    """One image judged and explained; all pictures are RGB at thumbnail size."""

    path: Path
    sha256: str  # of the bytes judged now; differs from the run's if the file changed since
    prob_ai: float
    heatmap: np.ndarray  # float32, thumbnail height x width, values in [0, 1]
    thumbnail: Image.Image
    overlay: Image.Image
    enlarged: bool = False  # the picture is smaller than the thumbnail (pixels repeated, not invented)
    evidence: list[Finding] = field(default_factory=list)  # provenance findings, strongest first
    # An image judged through several crops: each crop's box on the thumbnail and its own prob_ai,
    # and the thumbnail with the boxes drawn (what the gallery shows beside the Grad-CAM).
    crops: tuple[CropScore, ...] = ()
    crop_picture: Image.Image | None = None


@dataclass(frozen=True)
class ExplainFailure:
    """An image that could not be explained (unreadable now, moved, ...), and why."""

    path: Path
    error: str


ExplainResult = Explanation | ExplainFailure


# --------------------------------------------------------------------------- Grad-CAM


def find_layer(network: torch.nn.Module, name: str) -> torch.nn.Module:
    modules = dict(network.named_modules())
    if name not in modules:
        # A card naming a layer the network lacks is the model's fault: the user must act.
        raise ModelError(f"the model card's gradcam_layer {name!r} is not a layer of the network")
    return modules[name]


def _start_autograd_here(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: continue the forward pass from a detached copy that requires grad."""
    return output.detach().requires_grad_(True)


class GradCamExplainer:
    """Grad-CAM of the "ai-generated" class on the layer the model card names.

    Use it as a context manager: the hooks pytorch-grad-cam puts on the network are released on
    exit, so the same network can go on scoring without them.
    """

    def __init__(self, model: LoadedModel, batch_size: int = GRADCAM_BATCH_SIZE, device: str | torch.device | None = None):
        from pytorch_grad_cam import GradCAM

        self.model = model
        self.batch_size = batch_size
        # Default: where the network already is (the scan may have put it on the GPU).
        self.device = torch.device(device) if device is not None else next(model.network.parameters()).device
        self.model.network.to(self.device).eval()
        layer = find_layer(model.network, model.card.gradcam_layer)
        # Grad-CAM needs the gradient at this layer's output only. Making that output a fresh
        # leaf of the autograd graph stops backpropagation there: the layers below (most of
        # the compute at 32x32) are never differentiated, and the map still exists when the
        # caller froze the weights (docs/performance.md, "Grad-CAM").
        # Prepended, so pytorch-grad-cam's own hooks on the layer see this leaf.
        self._graph_start = layer.register_forward_hook(_start_autograd_here, prepend=True)
        self._cam = GradCAM(model=model.network, target_layers=[layer])

    def __enter__(self) -> "GradCamExplainer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._cam.activations_and_grads.release()
        self._graph_start.remove()
        self._cam.outputs = None

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated prob_ai (N,) from the network's logits (N, classes), with the card's temperature."""
        return self.model.probabilities(torch.from_numpy(logits)).cpu().numpy().astype(np.float64)

    def explain_batch_logits(self, batch_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """uint8 NCHW model inputs -> (logits (N, classes) float32, maps (N, H, W) in [0, 1] at input size).

        The logits come from the same forward pass as the maps, so a score cannot disagree with
        the picture it explains; the heatmap cache keeps logits (the temperature may change
        without the weights)."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        inputs = normalize(batch_uint8.to(self.device), self.model.card.preprocessing)
        targets = [ClassifierOutputTarget(AI_CLASS_INDEX)] * inputs.shape[0]
        # No weight needs a gradient: freezing them for the call spares the forward pass the
        # autograd bookkeeping (docs/performance.md, "Grad-CAM"); the graph starts at the layer.
        trainable = [p for p in self.model.network.parameters() if p.requires_grad]
        # A caller scoring under inference_mode must not make Grad-CAM silently empty.
        with torch.inference_mode(False), torch.enable_grad():
            try:
                for parameter in trainable:
                    parameter.requires_grad_(False)
                maps = self._cam(input_tensor=inputs.clone(), targets=targets)
                logits = self._cam.outputs.detach()
            finally:
                for parameter in trainable:
                    parameter.requires_grad_(True)
        logits_array = logits.float().cpu().numpy().astype(np.float32)
        # Drop the references that keep this batch's graph alive until the next call.
        self._cam.outputs = None
        self._cam.activations_and_grads.activations.clear()
        self._cam.activations_and_grads.gradients.clear()
        self.model.network.zero_grad(set_to_none=True)
        return logits_array, np.clip(maps, 0.0, 1.0).astype(np.float32)

    def _explain_placed(self, item: LoadedPicture) -> tuple[float, np.ndarray, tuple[CropScore, ...]]:
        """A center-crop or crops policy: the views' maps placed in the picture (place_view_maps),
        the probability from the views' averaged logits, as the scan computes it, and each crop's
        own probability with its box on the thumbnail (when there are several). (Not cached: the
        heatmap cache holds one input-size map an image.)"""
        pre = self.model.card.preprocessing
        views = item.model_input if item.model_input.ndim == 4 else item.model_input.unsqueeze(0)
        logits, maps = self.explain_batch_logits(views)
        prob_ai = float(self.probabilities(logits.mean(axis=0, keepdims=True))[0])
        heatmap = place_view_maps(maps, item.picture_size, pre, item.thumbnail.size)
        boxes, scaled = view_boxes(item.picture_size, pre)
        crops: tuple[CropScore, ...] = ()
        if len(boxes) > 1 and len(boxes) == len(logits):
            sx, sy = item.thumbnail.width / scaled[0], item.thumbnail.height / scaled[1]
            crops = tuple(CropScore((round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)), float(p))
                          for (left, top, right, bottom), p in zip(boxes, self.probabilities(logits)))
        return prob_ai, heatmap, crops

    def _explain_squashed(self, loaded: list[LoadedPicture], cache: ReportCache | None) -> list[tuple[float, np.ndarray]]:
        """The squash policy: one input-size map an image (from the cache where it has it),
        stretched over the whole thumbnail."""
        maps = self._maps(loaded, cache)
        probs = self.probabilities(np.stack([item.logits for item in maps]))
        return [(float(prob_ai), upsample_heatmap(cached.cam, item.thumbnail.size))
                for item, prob_ai, cached in zip(loaded, probs, maps)]

    def explain_paths(self, paths: Iterable[Path], thumbnail_size: int = THUMBNAIL_SIZE,
                      cache: ReportCache | None = None) -> Iterator[ExplainResult]:
        """Explain images batch by batch, results in input order; one batch in memory at a time.

        Each file is read once: its bytes give the model input, the sha256 and the thumbnail.
        With a ``cache`` (the run store's), Grad-CAM runs only for images whose (sha256, model,
        layer) it does not hold yet, and their maps are added to it.
        """
        pre = self.model.card.preprocessing
        batch: list[LoadedPicture | ExplainFailure] = []
        for path in paths:
            batch.append(_load_or_failure(Path(path), pre, thumbnail_size))
            if len(batch) >= self.batch_size:
                yield from self._finish(batch, cache)
                batch = []
        if batch:
            yield from self._finish(batch, cache)

    def _maps(self, pending: list[LoadedPicture], cache: ReportCache | None) -> list[CachedMap]:
        """(logits, map) per pending image: from the cache where it has them, else Grad-CAM."""
        model_id, layer = self.model.model_id, self.model.card.gradcam_layer
        known = cache.get_many([item.sha256 for item in pending], model_id, layer) if cache is not None else {}
        missing = [item for item in pending if item.sha256 not in known]
        if missing:
            logits, maps = self.explain_batch_logits(torch.stack([item.model_input for item in missing]))
            computed = {item.sha256: CachedMap(row, cam) for item, row, cam in zip(missing, logits, maps)}
            if cache is not None:
                cache.put_many(computed.items(), model_id, layer)
                cache.computed += len(computed)
            known = {**known, **computed}
        if cache is not None:
            cache.hits += len(pending) - len(missing)
        return [known[item.sha256] for item in pending]

    def _finish(self, batch: list[LoadedPicture | ExplainFailure], cache: ReportCache | None = None) -> Iterator[ExplainResult]:
        loaded = [item for item in batch if isinstance(item, LoadedPicture)]
        if self.model.card.preprocessing.resize_policy != "squash":
            scored = [self._explain_placed(item) for item in loaded]
        else:
            scored = [(prob_ai, heatmap, ()) for prob_ai, heatmap in self._explain_squashed(loaded, cache)] \
                if loaded else []
        threshold = self.model.card.threshold
        explained = {id(item): _explanation(item, prob_ai, heatmap, crops, threshold)
                     for item, (prob_ai, heatmap, crops) in zip(loaded, scored)}
        for item in batch:
            yield explained[id(item)] if isinstance(item, LoadedPicture) else item


def _load_or_failure(path: Path, pre: Preprocessing, thumbnail_size: int) -> LoadedPicture | ExplainFailure:
    """The picture loaded for its batch, or why it cannot be: a bad file is a result, never the
    end of the report."""
    try:
        return pictures.load_picture(path, pre, thumbnail_size)
    except ValueError as exc:
        return ExplainFailure(path, str(exc))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's, not the run's
        return ExplainFailure(path, f"{type(exc).__name__}: {exc}")


def _explanation(item: LoadedPicture, prob_ai: float, heatmap: np.ndarray, crops: tuple[CropScore, ...] = (),
                 threshold: float = 0.5) -> Explanation:
    return Explanation(path=item.path, sha256=item.sha256, prob_ai=prob_ai, heatmap=heatmap, thumbnail=item.thumbnail,
                       overlay=overlay_heatmap(item.thumbnail, heatmap), enlarged=item.enlarged, evidence=item.evidence,
                       crops=crops, crop_picture=draw_crop_boxes(item.thumbnail, crops, threshold) if crops else None)


def view_boxes(picture_size: tuple[int, int], pre: Preprocessing) -> tuple[list[tuple[int, int, int, int]], tuple[int, int]]:
    """The boxes of a center-crop or crops policy's distinct views (the scan's order), in the
    picture resized as the policy resizes it, and that size."""
    if pre.resize_policy == "crops":
        scaled = crops_scale(picture_size, pre)
        return list(dict.fromkeys(crop_boxes(scaled, pre.input_size, pre.crops))), scaled
    scaled = shorter_side_to(picture_size, pre.input_size)
    return crop_boxes(scaled, pre.input_size, 1), scaled


def place_view_maps(maps: np.ndarray, picture_size: tuple[int, int], pre: Preprocessing,
                    thumbnail_size: tuple[int, int]) -> np.ndarray:
    """A center-crop or crops policy's view maps as one map of the picture, at thumbnail size:
    each view's map placed where that view lies in the picture, averaged where crops overlap,
    zero where no crop looked."""
    boxes, scaled = view_boxes(picture_size, pre)
    canvas = np.zeros((scaled[1], scaled[0]), dtype=np.float32)
    looked = np.zeros_like(canvas)
    for (left, top, right, bottom), cam in zip(boxes, maps):
        canvas[top:bottom, left:right] += upsample_heatmap(cam, (right - left, bottom - top))
        looked[top:bottom, left:right] += 1
    canvas = np.divide(canvas, looked, out=np.zeros_like(canvas), where=looked > 0)
    return upsample_heatmap(canvas, thumbnail_size)


def explain_images(
    paths: Sequence[str | Path],
    model: LoadedModel | str | Path | None = None,
    thumbnail_size: int = THUMBNAIL_SIZE,
    batch_size: int = GRADCAM_BATCH_SIZE,
) -> list[ExplainResult]:
    """Image paths -> one result each (prob_ai, heatmap, overlay, or why it failed), in order."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    with GradCamExplainer(loaded, batch_size=batch_size) as explainer:
        return list(explainer.explain_paths([Path(p) for p in paths], thumbnail_size))


def gradcam_grid(model: LoadedModel) -> tuple[int, int]:
    """(rows, columns) of the Grad-CAM map: the card's layer's output size at the input size."""
    layer = find_layer(model.network, model.card.gradcam_layer)
    size = model.card.preprocessing.input_size
    shapes: list[tuple[int, ...]] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: shapes.append(tuple(output.shape)))
    try:
        device = next(model.network.parameters()).device
        with torch.no_grad():
            model.network(torch.zeros(1, 3, size, size, device=device))
    finally:
        handle.remove()
    return shapes[0][-2], shapes[0][-1]
