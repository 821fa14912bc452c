"""When the model cannot judge an image: the card's probability band and novelty statistics.

A scored image is *uncertain* (audit.verdicts) when

* its calibrated probability lies in the band ``[band_low, band_high)`` around the threshold,
  fitted on validation data (``python -m training calibrate-uncertain``);
* it is unlike the training images: its *novelty*, the Mahalanobis-style distance of the
  network's pooled penultimate features (512 for ResNet18, averaged over an image's crops) to the
  training features, is above a threshold fitted as a quantile of the training images' own
  novelty. The card keeps the training features' mean and a low-rank covariance (the top
  principal directions with their variances, and one variance for the rest), so the distance
  costs one small matrix product per image;
* or, with ``check_degraded``, its verdict flips between the image and a degraded copy
  (:func:`degraded_copy`: 0.5x rescale, then JPEG q75).

A card without these fields (every card before them) never makes a row uncertain.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image
    from torch import nn

NOVELTY_METHOD = "pca-mahalanobis"
DEGRADED_JPEG_QUALITY = 75
DEGRADED_SCALE = 0.5
DEGRADED_DESCRIPTION = f"{DEGRADED_SCALE:g}x rescale and JPEG q{DEGRADED_JPEG_QUALITY}"


@dataclass
class NoveltyStatistics:
    """The training images' pooled features, compactly: mean, top principal directions and their
    variances, one variance for the remaining directions, and the novelty threshold."""

    mean: list[float]
    components: list[list[float]]  # k x d, orthonormal rows
    variances: list[float]  # k, the variance along each component
    residual_variance: float  # the mean variance of the directions not kept
    threshold: float  # novelty above it: unlike the training images
    method: str = NOVELTY_METHOD
    fitted: str = ""  # how: data, sample size, quantile

    def problems(self) -> list[str]:
        dim = len(self.mean)
        problems = []
        if self.method != NOVELTY_METHOD:
            problems.append(f"novelty method {self.method!r} is not {NOVELTY_METHOD!r}")
        if dim == 0 or any(len(row) != dim for row in self.components) or len(self.variances) != len(self.components):
            problems.append("novelty statistics need components of the mean's length and one variance each")
        if not all(v > 0 for v in self.variances) or not self.residual_variance > 0:
            problems.append("novelty variances must be > 0")
        if not self.threshold > 0:
            problems.append(f"novelty threshold must be > 0 (got {self.threshold!r})")
        return problems

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Novelty of each row of ``features`` (N x d): the Mahalanobis distance under the stored
        covariance, divided by sqrt(d) so that a typical training image scores about 1."""
        import torch

        mean, components, variances = self._tensors(features.device)
        centred = features.float() - mean
        projected = centred @ components.T  # N x k
        residual = (centred * centred).sum(dim=1) - (projected * projected).sum(dim=1)
        squared = (projected * projected / variances).sum(dim=1) + residual.clamp(min=0) / self.residual_variance
        return torch.sqrt(squared / len(self.mean))

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mean, components and variances as tensors on ``device``, made once (from the lists,
        they cost more than the product itself); kept outside the dataclass's fields."""
        import torch

        cache = self.__dict__.setdefault("_tensor_cache", {})
        if str(device) not in cache:
            cache[str(device)] = tuple(torch.tensor(values, dtype=torch.float32, device=device)
                                       for values in (self.mean, self.components, self.variances))
        return cache[str(device)]

    @classmethod
    def fit(cls, features: np.ndarray, components: int = 8, quantile: float = 0.99,
            fitted: str = "") -> "NoveltyStatistics":
        """Statistics of ``features`` (N x d training features), the threshold at their
        ``quantile`` of novelty."""
        import numpy as np
        import torch

        data = np.asarray(features, dtype=np.float64)
        count, dim = data.shape
        mean = data.mean(axis=0)
        centred = data - mean
        _, singular, directions = np.linalg.svd(centred, full_matrices=False)
        eigen = singular**2 / max(1, count - 1)
        kept = max(1, min(components, len(eigen) - 1, dim - 1))
        floor = max(float(eigen[0]) * 1e-6, 1e-12)
        rest = eigen[kept:]
        residual = max(float(rest.sum()) / max(1, dim - kept), floor)
        stats = cls(mean=_rounded(mean), components=[_rounded(row) for row in directions[:kept]],
                    variances=_rounded(np.maximum(eigen[:kept], floor)), residual_variance=residual, threshold=1.0,
                    fitted=fitted)
        novelty = stats.score(torch.from_numpy(data.astype(np.float32))).numpy()
        stats.threshold = float(np.quantile(novelty, quantile))
        return stats


@dataclass
class Uncertainty:
    """The card's rules for the ``uncertain`` verdict; each part is optional."""

    band_low: float | None = None
    band_high: float | None = None
    band_fitted: str = ""  # how the band was chosen, in words
    novelty: NoveltyStatistics | None = None
    check_degraded: bool = False  # the card asks for the degraded-copy check by default
    notes: list[str] = field(default_factory=list)

    @property
    def has_band(self) -> bool:
        return self.band_low is not None and self.band_high is not None

    def problems(self, threshold: float) -> list[str]:
        problems = []
        if (self.band_low is None) != (self.band_high is None):
            problems.append("the uncertain band needs both band_low and band_high")
        elif self.has_band and not (0.0 <= self.band_low <= threshold <= self.band_high <= 1.0):
            problems.append(f"the uncertain band must hold the threshold: 0 <= band_low <= {threshold} <= band_high "
                            f"<= 1 (got {self.band_low}, {self.band_high})")
        if self.novelty is not None:
            problems.extend(self.novelty.problems())
        return problems

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Uncertainty":
        values = dict(data)
        if values.get("novelty") is not None:
            values["novelty"] = NoveltyStatistics(**values["novelty"])
        return cls(**values)

    def describe(self) -> list[str]:
        """The rules in words, for the report and `audit models`."""
        lines = []
        if self.has_band:
            lines.append(f"probability in the band {self.band_low:.2f}-{self.band_high:.2f}"
                         + (f" ({self.band_fitted})" if self.band_fitted else ""))
        if self.novelty is not None:
            lines.append(f"novelty above {self.novelty.threshold:.2f}: unlike the training images"
                         + (f" ({self.novelty.fitted})" if self.novelty.fitted else ""))
        if self.check_degraded:
            lines.append(f"the verdict flips under {DEGRADED_DESCRIPTION}")
        return lines


def uncertain_reason(prob_ai: float, threshold: float, rules: Uncertainty | None, novelty: float | None = None,
                     prob_degraded: float | None = None) -> str | None:
    """Why the model cannot judge this image ("uncertain: ..."), or None when it can."""
    if rules is None:
        rules = Uncertainty()
    if rules.has_band and rules.band_low <= prob_ai < rules.band_high:
        return f"uncertain: probability {prob_ai:.2f} in the band {rules.band_low:.2f}-{rules.band_high:.2f}"
    if rules.novelty is not None and novelty is not None and novelty > rules.novelty.threshold:
        return f"uncertain: unlike the training images (novelty {novelty:.2f} > {rules.novelty.threshold:.2f})"
    if prob_degraded is not None and (prob_ai >= threshold) != (prob_degraded >= threshold):
        return f"uncertain: flips under {DEGRADED_DESCRIPTION} (probability {prob_ai:.2f} -> {prob_degraded:.2f})"
    return None


# --------------------------------------------------------------------------- features


def features_and_logits(network: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled penultimate features (N x 512) and the logits of a ResNet18: the network's own
    forward, stopped before its last layer so the features come at no extra cost."""
    import torch

    x = network.maxpool(network.relu(network.bn1(network.conv1(inputs))))
    x = network.layer4(network.layer3(network.layer2(network.layer1(x))))
    features = torch.flatten(network.avgpool(x), 1)
    return features, network.fc(features)


def degraded_copy(rgb_image: Image.Image) -> Image.Image:
    """The image as a careless re-delivery would make it: half the size, then JPEG q75."""
    from PIL import Image

    width, height = rgb_image.size
    smaller = rgb_image.resize((max(1, round(width * DEGRADED_SCALE)), max(1, round(height * DEGRADED_SCALE))),
                               Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    smaller.save(buffer, format="JPEG", quality=DEGRADED_JPEG_QUALITY)
    buffer.seek(0)
    with Image.open(buffer) as reopened:
        return reopened.convert("RGB")


def _rounded(values: Sequence[float] | np.ndarray) -> list[float]:
    # Seven significant digits: float32's precision, and a card a fraction of the size.
    return [float(f"{float(v):.7g}") for v in values]
