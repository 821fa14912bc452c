"""The load stage: a file record -> the model's uint8 input tensor, or an error value.

:func:`load_image` never raises for anything an archive can contain: every failure is returned
as a :class:`LoadResult` whose ``error`` says what is wrong, so the run goes on and the file
still gets its row. The file is read once; its sha256, size, format and dimensions come from
those bytes, and the decoder only ever sees them (never the path again).

Preprocessing follows the model card via :func:`audit.model._input_policy.to_model_input`; this module only
turns whatever the file holds into one upright RGB picture first:

* EXIF orientation is applied (``ImageOps.exif_transpose``).
* Transparency (LA, RGBA, PA, P or L/RGB with a tRNS colour) is composited onto the card's
  ``alpha_background`` (white by default), the colour a viewer shows behind such an image.
* 16-bit and 32-bit integer greyscale (I;16, I) is scaled to 8 bits (value / 257), not clipped.
* CMYK is converted with Pillow's plain formula (no ICC colour management).
* Large JPEGs are decoded at reduced size with Pillow's draft mode (libjpeg's DCT scaling by
  1/2, 1/4 or 1/8), keeping at least ``DRAFT_MARGIN`` times the model's input size on each side
  so the final antialiased resize in ``to_model_input`` still does the last reduction.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps

from audit.evidence import EvidenceOptions, Finding, read_evidence
from audit.intake._discover import SNIFF_BYTES, SUPPORTED_FORMATS, FileRecord, sniff_format
from audit.model import Preprocessing, degraded_copy, route_index, to_model_input

if TYPE_CHECKING:  # the tensor comes from input_policy.to_model_input; importing torch here would slow a rerun that decodes nothing
    import torch

DEFAULT_MAX_PIXELS = 100_000_000
# Reading a file means holding it in memory once; bigger files are refused before reading.
# 512 MiB is beyond any photo, and bounds what each worker process can hold.
DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
# Draft decoding keeps at least this many times the model's input size on each side.
DRAFT_MARGIN = 2
_MAX_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class LoadOptions:
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    draft: bool = True
    # The evidence stage reads metadata from the same bytes and opened image; None: off.
    evidence: EvidenceOptions | None = field(default_factory=EvidenceOptions)
    # A crops policy: each distinct crop once (the scan), or always K so images stack (training).
    distinct_views: bool = True
    # The card's routes by size: (longest side, that model's input policy), audit.model.route_policies.
    routes: tuple[tuple[int, Preprocessing], ...] = ()
    # Also make the input of a degraded copy (audit.model.degraded_copy), for the uncertain verdict.
    check_degraded: bool = False


@dataclass
class LoadResult:
    """What the load stage learnt about one file. ``tensor`` is set exactly when ``error`` is not."""

    record: FileRecord
    sha256: str = ""
    n_bytes: int | None = None
    format: str = ""
    width: int | None = None  # as displayed, i.e. after EXIF orientation
    height: int | None = None
    tensor: torch.Tensor | None = None  # uint8 CHW, the model's input size
    error: str | None = None
    note: str = ""
    evidence: list[Finding] = field(default_factory=list)  # audit.evidence._metadata findings, strongest first
    route: int = 0  # 0: the card's own network; i: its i-th route by size (audit.model.route_index)
    # With check_degraded: the degraded copy's input, as ``tensor``, for the same route's network.
    degraded_tensor: torch.Tensor | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _LoadFailure(Exception):
    """Internal: carries the row's error message up to load_image."""


def _one_line(text: str) -> str:
    """Exception text can quote file content; keep it to one bounded line."""
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."


def read_file_bytes(path: str, max_bytes: int) -> bytes:
    """Read a whole file, refusing (before reading) one larger than max_bytes."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise _LoadFailure(f"file too large to audit: {size} bytes (limit {max_bytes})")
            return handle.read(max_bytes + 1)
    except OSError as exc:
        raise _LoadFailure(f"cannot read file: {_one_line(exc.strerror or exc)}") from None


@contextlib.contextmanager
def strict_pillow() -> Iterator[None]:
    """Pillow settings for one decode, whatever other code in the process has set globally.

    * ``LOAD_TRUNCATED_IMAGES`` off: a truncated file is an error row, not a half-grey image.
      (WeasyPrint, used by the report stage, switches it on when it is imported.)
    * Pillow's own decompression-bomb check off: the audit makes its own (``--max-pixels``)
      from the header, before decoding, with a clear message; Pillow's would fire first with its
      own fixed limit (89 MP).

    Each worker process decodes one image at a time, so the globals are not shared across decodes.
    """
    previous = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, False
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _open_failure_reason(data: bytes, image_format: str) -> str:
    """Image.open hides why the plugin refused the bytes; ask the plugin itself."""
    factory = Image.OPEN[image_format][0]
    try:
        factory(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - we want the message of whatever it raised
        return _one_line(exc) or exc.__class__.__name__
    return "cannot identify image file"


def _bomb_message(width: int, height: int, max_pixels: int) -> str:
    return (
        f"decompression bomb refused: {width}x{height} = {width * height:,} pixels is over the "
        f"limit of {max_pixels:,} (--max-pixels); not decoded"
    )


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    """Width and height as displayed: EXIF orientations 5-8 swap the axes."""
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - broken EXIF is not a reason to refuse the image
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _frames_note(image: Image.Image) -> str:
    n_frames = getattr(image, "n_frames", 1)
    if n_frames <= 1:
        return ""
    if getattr(image, "is_animated", False) and image.format != "TIFF":
        return f"animated: first of {n_frames} frames scored"
    return f"multi-page: first of {n_frames} pages scored"


def _scale_to_uint8(image: Image.Image) -> Image.Image:
    """Integer/float greyscale with more than 8 bits -> 8-bit L, scaled rather than clipped."""
    array = np.asarray(image)
    if image.mode.startswith("I;16") or (image.mode == "I" and array.size and array.max() > 255):
        # 16-bit range (an "I" image with values above 255 is taken as 16-bit data).
        scaled = np.clip(array.astype(np.float64), 0, 65535) / 257.0
    elif image.mode == "F" and array.size and np.nanmax(array) <= 1.0:
        scaled = np.nan_to_num(array.astype(np.float64)) * 255.0
    else:
        scaled = np.nan_to_num(array.astype(np.float64))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any decoded Pillow image -> RGB, compositing transparency onto ``background``."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _scale_to_uint8(image)
    has_alpha = image.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image if image.mode == "RGB" else image.convert("RGB")


def _decode(data: bytes, image_format: str, options: LoadOptions, result: LoadResult) -> Image.Image:
    """Open (header only), check the size, then decode the first frame upright."""
    pre = options.preprocessing
    try:
        with strict_pillow():
            # Only the format the content was sniffed as: no other Pillow plugin parses the bytes.
            try:
                image = Image.open(io.BytesIO(data), formats=[image_format])
            except Image.UnidentifiedImageError:
                raise _LoadFailure(f"corrupt {image_format} file: {_open_failure_reason(data, image_format)}") from None
            result.format = image.format or image_format
            width, height = image.size
            result.width, result.height = _oriented_size(image)  # the declared size, even if refused
            if width * height > options.max_pixels:
                raise _LoadFailure(_bomb_message(width, height, options.max_pixels))
            result.note = _frames_note(image)
            if options.draft and image.format == "JPEG":
                target = pre.decode_size * DRAFT_MARGIN
                image.draft(None, (target, target))
            image.load()
            if options.evidence is not None:
                # After load(): PNG text chunks that follow the image data are in image.info.
                result.evidence = read_evidence(data, image_format, image, options.evidence)
    except _LoadFailure:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _LoadFailure(f"decompression bomb refused: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's error row
        raise _LoadFailure(_decode_error_message(image_format, exc)) from None
    upright = ImageOps.exif_transpose(image)
    return to_rgb(upright, pre.alpha_background)


def _decode_error_message(image_format: str, exc: Exception) -> str:
    text = _one_line(exc) or exc.__class__.__name__
    if "truncated" in text.lower():
        return f"truncated {image_format} file: {text}"
    return f"corrupt {image_format} file: {text}"


def load_image(record: FileRecord, options: LoadOptions) -> LoadResult:
    """Load one discovered file into the model's input, or describe why it cannot be."""
    result = LoadResult(record=record)
    if record.error:
        result.error = record.error
        return result
    try:
        data = read_file_bytes(record.abs_path, options.max_file_bytes)
    except _LoadFailure as failure:
        result.error = str(failure)
        return result
    except Exception as exc:  # noqa: BLE001 - the last guard: a row, never a stopped run
        result.error = f"cannot load image: {_one_line(exc) or exc.__class__.__name__}"
        return result
    return load_bytes(data, options, result)


def _routed_input(rgb: Image.Image, route: int, options: LoadOptions) -> torch.Tensor:
    """The model input of ``rgb`` under its route's input policy (0: the card's own)."""
    pre = options.routes[route - 1][1] if route else options.preprocessing
    tensor = to_model_input(rgb, pre, distinct_views=options.distinct_views)
    if route and options.preprocessing.resize_policy == "crops" and tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)  # one view, stacked as the card's crops are
    return tensor


def load_bytes(data: bytes, options: LoadOptions, result: LoadResult) -> LoadResult:
    """Decode a file's bytes into the model's input, filling ``result``; never raises.

    Training decodes its data sets through here too, so the network is trained on exactly the
    pixels the scan will give it.
    """
    try:
        result.n_bytes = len(data)
        result.sha256 = hashlib.sha256(data).hexdigest()
        if not data:
            raise _LoadFailure("empty file (0 bytes)")
        image_format = sniff_format(data[:SNIFF_BYTES])
        if image_format is None:
            raise _LoadFailure(
                f"not an image: content is not {'/'.join(SUPPORTED_FORMATS)} (starts with {data[:8]!r})"
            )
        rgb = _decode(data, image_format, options, result)
        del data  # the encoded bytes are no longer needed; keep the worker's memory small
        result.route = route_index(result.width, result.height, options.routes)
        result.tensor = _routed_input(rgb, result.route, options)
        if options.check_degraded:  # judged by the network that judged the image: is its verdict stable?
            result.degraded_tensor = _routed_input(degraded_copy(rgb), result.route, options)
    except _LoadFailure as failure:
        result.error = str(failure)
    except Exception as exc:  # noqa: BLE001 - the last guard: a row, never a stopped run
        result.error = f"cannot load image: {_one_line(exc) or exc.__class__.__name__}"
    return result
