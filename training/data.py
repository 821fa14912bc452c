"""Data sets laid out as ``SPLIT/REAL|FAKE/...``, read from a folder or straight from a zip file,
and what a run trains and validates on (:func:`prepare_data`, :func:`epoch_order`).

Any data set with that layout works, not only CIFAKE. The split and the label come from the
folders, never from the file name (CIFAKE repeats file names across splits).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np
import torch

from audit.errors import UsageError
from audit.intake import FileRecord, LoadOptions, LoadResult, load_bytes
from audit.model import ModelCard, Preprocessing, crop_boxes

log = logging.getLogger("training")

LABEL_FOLDERS = {"real": 0, "fake": 1}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


class DataError(UsageError):
    """The data set cannot be read as SPLIT/REAL|FAKE folders."""


@dataclass
class ImageSet:
    """Decoded images held in memory as uint8 NCHW (NKCHW for a crops policy), with labels
    (0 real, 1 fake) and hashes."""

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    sha256: list[str]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def sources(self) -> list[str]:
        return [source_of(name) for name in self.names]

    def subset(self, indices: np.ndarray | list[int]) -> "ImageSet":
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageSet(
            images=self.images[index],
            labels=self.labels[index],
            names=[self.names[i] for i in index.tolist()],
            sha256=[self.sha256[i] for i in index.tolist()],
        )


@dataclass
class DataSpec:
    """One training data set: ``PATH[:share=F][:balance]`` on the command line.

    ``share`` is the part of each epoch's draws that come from this set (shares are
    normalised over the sets); ``balance`` draws every source of the set (see
    :func:`source_of`) equally often within each class, so that 1,000 images of one style do
    not outweigh 50 of another.
    """

    path: Path
    share: float = 1.0
    balance: bool = False

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.name


def parse_data_spec(text: str) -> DataSpec:
    path, *options = str(text).split(":")
    spec = DataSpec(Path(path))
    for option in options:
        key, _, value = option.partition("=")
        if key == "share":
            try:
                spec.share = float(value)
            except ValueError:
                raise DataError(f"--data {text}: share must be a number (got {value!r})") from None
            if not spec.share > 0:
                raise DataError(f"--data {text}: share must be > 0")
        elif key == "balance" and not value:
            spec.balance = True
        else:
            raise DataError(f"--data {text}: unknown option {option!r} (known: share=F, balance)")
    return spec


def source_of(name: str) -> str:
    """The source of a file within its data set: the prefix of its file name before the first
    underscore (wild.zip names files ``SOURCE_...``), else its label folder (CIFAKE's
    ``REAL``/``FAKE``)."""
    path = PurePosixPath(name)
    stem, sep, _ = path.name.partition("_")
    if sep and stem:
        return stem
    return path.parent.name or "all"


def sampling_weights(labels: torch.Tensor, sources: list[str], balance: bool) -> torch.Tensor:
    """Per-image draw weights summing to 1 within the set: uniform, or with every
    (class, source) group drawn equally often within its class and the classes equally."""
    count = len(sources)
    if not balance:
        return torch.full((count,), 1.0 / count, dtype=torch.float64)
    groups: dict[tuple[int, str], int] = {}
    for label, source in zip(labels.tolist(), sources):
        groups[(label, source)] = groups.get((label, source), 0) + 1
    sources_per_class = {label: sum(1 for key in groups if key[0] == label) for label in (0, 1)}
    classes = sum(1 for label in (0, 1) if sources_per_class[label])
    weights = [1.0 / (classes * sources_per_class[label] * groups[(label, source)])
               for label, source in zip(labels.tolist(), sources)]
    return torch.tensor(weights, dtype=torch.float64)


def has_split(source: str | Path, split: str) -> bool:
    """Whether a data set has images under SPLIT/REAL or SPLIT/FAKE (names only, no decoding)."""
    source = Path(source)
    split = split.lower()
    if source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            names = [PurePosixPath(info.filename) for info in archive.infolist() if not info.is_dir()]
    elif source.is_dir():
        names = [PurePosixPath(p.relative_to(source).as_posix()) for p in source.rglob("*") if p.is_file()]
    else:
        raise DataError(f"{source} is neither a folder nor a zip file")
    return any(name.suffix.lower() in IMAGE_SUFFIXES and _split_and_label(name, split) is not None for name in names)


def _split_and_label(relative: PurePosixPath, split: str) -> int | None:
    """Return the label when the path lies under SPLIT/REAL or SPLIT/FAKE, else None."""
    parts = relative.parts
    for position in range(len(parts) - 2):
        if parts[position].lower() == split and parts[position + 1].lower() in LABEL_FOLDERS:
            return LABEL_FOLDERS[parts[position + 1].lower()]
    return None


def iter_files(source: Path, split: str) -> Iterator[tuple[str, int, bytes]]:
    """Yield (relative name, label, file bytes) for every image of a split, in sorted order."""
    split = split.lower()
    if source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            members = sorted(info.filename for info in archive.infolist() if not info.is_dir())
            for member in members:
                relative = PurePosixPath(member)
                if relative.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                label = _split_and_label(relative, split)
                if label is not None:
                    yield member, label, archive.read(member)
    elif source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for path in paths:
            relative = PurePosixPath(path.relative_to(source).as_posix())
            label = _split_and_label(relative, split)
            if label is not None:
                yield relative.as_posix(), label, path.read_bytes()
    else:
        raise DataError(f"{source} is neither a folder nor a zip file")


def decode_to_input(name: str, data: bytes, pre: Preprocessing) -> tuple[torch.Tensor | None, str | None]:
    """Decode exactly as the scan does (EXIF orientation, modes, alpha, draft); (tensor, error)."""
    options = LoadOptions(preprocessing=pre, evidence=None, distinct_views=False)
    result = load_bytes(data, options, LoadResult(record=FileRecord(root="", rel_path=name, abs_path=name)))
    return result.tensor, result.error


def load_split(source: str | Path, split: str, pre: Preprocessing, limit_per_class: int | None = None) -> ImageSet:
    """Decode every image of a split into memory (CIFAKE's 100,000 train images take ~300 MB)."""
    source = Path(source)
    tensors: list[torch.Tensor] = []
    labels: list[int] = []
    names: list[str] = []
    hashes: list[str] = []
    per_class = {0: 0, 1: 0}
    skipped: list[str] = []
    for name, label, data in iter_files(source, split):
        if limit_per_class is not None and per_class[label] >= limit_per_class:
            continue
        tensor, error = decode_to_input(name, data, pre)
        if tensor is None:
            # A user's own data set may hold a broken file; one bad file must not end a long run.
            skipped.append(f"{name}: {error}")
            continue
        per_class[label] += 1
        tensors.append(tensor)
        labels.append(label)
        names.append(name)
        hashes.append(hashlib.sha256(data).hexdigest())
    if skipped:
        log.warning("%s split: skipped %d unreadable files, e.g. %s", split, len(skipped), skipped[0])
    if not names:
        raise DataError(f"no images under {split}/REAL or {split}/FAKE in {source}")
    if min(per_class.values()) == 0:
        raise DataError(f"{split} split of {source} has only one class: {per_class}")
    return ImageSet(torch.stack(tensors), torch.tensor(labels, dtype=torch.int64), names, hashes)


def split_hashes(source: str | Path, split: str) -> set[str]:
    """sha256 of every file of a split, without decoding (for de-duplicated test metrics)."""
    return {hashlib.sha256(data).hexdigest() for _, _, data in iter_files(Path(source), split)}


def stratified_split(labels: torch.Tensor, hashes: list[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified train/validation split that keeps byte-identical files together.

    CIFAKE's train/FAKE holds 920 duplicate pairs; splitting them apart would put validation
    images into training and flatter the validation metrics.
    """
    rng = np.random.default_rng(seed)
    labels_np = labels.numpy()
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in np.unique(labels_np):
        groups: dict[str, list[int]] = {}
        for index in np.flatnonzero(labels_np == label):
            groups.setdefault(hashes[index], []).append(int(index))
        keys = sorted(groups)
        rng.shuffle(keys)
        wanted = round(val_fraction * int((labels_np == label).sum()))
        taken = 0
        for key in keys:
            target = val_idx if taken < wanted else train_idx
            target.extend(groups[key])
            if target is val_idx:
                taken += len(groups[key])
    return np.array(sorted(train_idx)), np.array(sorted(val_idx))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units."""
    as_float = images.float().div_(255.0)
    mean = as_float.mean(dim=(0, 2, 3))
    std = as_float.std(dim=(0, 2, 3))
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def typical_shorter_side(source: str | Path, split: str, sample: int = 300) -> int:
    """Median shorter side of the first images of a split (headers only, nothing decoded)."""
    import io

    from PIL import Image

    sides = []
    for _name, _label, data in iter_files(Path(source), split):
        try:
            with Image.open(io.BytesIO(data)) as image:
                sides.append(min(image.size))
        except Exception:  # noqa: BLE001 - an unreadable file is skipped later by load_split
            continue
        if len(sides) >= sample:
            break
    return int(np.median(sides)) if sides else 0


# --------------------------------------------------------------------------- a run's data


@dataclass
class TrainingData:
    """Every data set's train images in one tensor (the storage view), what to draw each epoch,
    and each set's validation images in the policy's own view."""

    specs: list[DataSpec]
    train_parts: list[ImageSet]  # one per data set: a crops policy stores each at its own size
    draw_weights: torch.Tensor
    validation: dict[str, ImageSet]
    validation_origin: dict[str, str]
    pre: Preprocessing
    counts: dict[str, Any] = field(default_factory=dict)
    storage_sides: list[int] = field(default_factory=list)

    @property
    def train_size(self) -> int:
        return sum(len(part) for part in self.train_parts)

    @property
    def train_labels(self) -> torch.Tensor:
        return torch.cat([part.labels for part in self.train_parts])


def data_specs(args: argparse.Namespace) -> list[DataSpec]:
    given = args.data if isinstance(args.data, list) else [args.data]
    specs = [parse_data_spec(text) for text in given]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise DataError(f"--data: two data sets share a name ({', '.join(names)}); rename a folder or zip")
    return specs


def policy_of(args: argparse.Namespace) -> Preprocessing:
    """The input policy asked for (normalisation filled in later)."""
    policy = Preprocessing(
        input_size=getattr(args, "input_size", 32), resize_policy=getattr(args, "resize_policy", "squash"),
        scale_size=getattr(args, "scale_size", 0), crops=getattr(args, "crops", 1),
    )
    if policy.resize_policy != "crops":
        policy = dataclasses.replace(policy, scale_size=0, crops=1)
    problems = policy.problems()
    if problems:
        raise DataError("the input policy asked for is invalid: " + "; ".join(problems))
    return policy


def pretrained_normalisation(spec: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """A fine-tune keeps the normalisation its starting model was trained with (its card's)."""
    if not spec or spec == "imagenet":
        return None
    card_path = Path(spec).with_suffix(".json")
    if not card_path.is_file():
        return None
    pre = ModelCard.from_json(card_path.read_text(encoding="utf-8")).preprocessing
    return pre.mean, pre.std


def views_from_storage(images: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """The policy's crops, taken from images stored as their central square (carved validation)."""
    if pre.views == 1 or images.shape[-1] == pre.input_size:
        # Squash and center-crop store exactly the policy's view; images no larger than one
        # crop have a single distinct view (their K copies would average to the same logits).
        return images
    boxes = crop_boxes((images.shape[-1], images.shape[-2]), pre.input_size, pre.crops)
    return torch.stack([images[:, :, top:bottom, left:right] for left, top, right, bottom in boxes], dim=1)


def split_for_training(spec: DataSpec, full: ImageSet, policy: Preprocessing,
                       args: argparse.Namespace) -> tuple[ImageSet, ImageSet, str]:
    """A set's train images, its validation images (its val/ split, or part of train held out)
    and where the validation came from."""
    if has_split(spec.path, "val"):
        validation = load_split(spec.path, "val", policy)
        return full, validation, f"its val/ split ({len(validation)} images)"
    train_idx, val_idx = stratified_split(full.labels, full.sha256, args.val_fraction, args.seed)
    train_set, held_out = full.subset(train_idx), full.subset(val_idx)
    held_out.images = views_from_storage(held_out.images, policy)
    return train_set, held_out, (f"{args.val_fraction:.0%} of its train split, stratified, seed {args.seed}, "
                                 f"duplicates kept together ({len(held_out)} images)")


def prepare_data(args: argparse.Namespace) -> TrainingData:
    """Decode each set's train split, hold out validation, and weigh what each epoch draws."""
    started = time.perf_counter()
    specs = data_specs(args)
    policy = policy_of(args)
    train_parts: list[ImageSet] = []
    weights: list[torch.Tensor] = []
    validation: dict[str, ImageSet] = {}
    origin: dict[str, str] = {}
    counts: dict[str, Any] = {}
    total_share = sum(spec.share for spec in specs)
    sides = [storage_side(spec, policy) for spec in specs]
    for spec, side in zip(specs, sides):
        full = load_split(spec.path, "train", policy.storage_view(side), limit_per_class=args.limit_per_class)
        train_set, validation[spec.name], origin[spec.name] = split_for_training(spec, full, policy, args)
        del full
        train_parts.append(train_set)
        weights.append(sampling_weights(train_set.labels, train_set.sources, spec.balance) * (spec.share / total_share))
        counts[spec.name] = {
            "train_images": len(train_set), "validation_images": len(validation[spec.name]),
            "train_real": int((train_set.labels == 0).sum()), "train_ai": int((train_set.labels == 1).sum()),
            "train_sources": len(set(train_set.sources)),
        }
    normalisation = pretrained_normalisation(args.pretrained) or channel_stats(train_parts[0].images)
    pre = dataclasses.replace(policy, mean=tuple(normalisation[0]), std=tuple(normalisation[1]))
    log.info(
        "data: %d train images from %d sets (stored at %s px), validation %s (decoded in %.0f s); input %s; mean %s std %s",
        sum(len(part) for part in train_parts), len(specs), sides, {name: len(v) for name, v in validation.items()}, time.perf_counter() - started,
        pre.describe(), pre.mean, pre.std,
    )
    return TrainingData(specs, train_parts, torch.cat(weights), validation, origin, pre, counts, sides)


def storage_side(spec: DataSpec, policy: Preprocessing) -> int:
    """The side a crops policy stores a data set's images at: scale_size, or the set's own
    typical shorter side when smaller (CIFAKE's 32 px images are never enlarged)."""
    if policy.resize_policy != "crops":
        return policy.input_size
    typical = typical_shorter_side(spec.path, "train")
    return max(policy.input_size, min(policy.scale_size, typical))


def epoch_draws(data: TrainingData, args: argparse.Namespace) -> int:
    """How many train images an epoch draws (what :func:`epoch_order` returns, counted)."""
    return args.epoch_size or data.train_size


def epoch_order(data: TrainingData, args: argparse.Namespace, epoch: int) -> torch.Tensor:
    """Which train images an epoch sees, in order; seeded by the epoch alone, so a resumed run
    sees the same. One set without balancing: each image once (as before several sets existed)."""
    generator = torch.Generator().manual_seed(args.seed * 10_000 + epoch)
    single = len(data.specs) == 1 and not data.specs[0].balance
    if single and args.epoch_size is None:
        return torch.randperm(data.train_size, generator=generator)
    return torch.multinomial(data.draw_weights, epoch_draws(data, args), replacement=True, generator=generator)
