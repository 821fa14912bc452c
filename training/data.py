"""Data sets laid out as ``SPLIT/REAL|FAKE/...``, read from a folder or straight from a zip file.

Any data set with that layout works, not only CIFAKE. The split and the label come from the
folders, never from the file name (CIFAKE repeats file names across splits).
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import torch

from audit.errors import UsageError
from audit.discover import FileRecord
from audit.loading import LoadOptions, LoadResult, load_bytes
from audit.input_policy import Preprocessing

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
