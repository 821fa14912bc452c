"""Builders for the scan tests: a small model and image files of every awkward kind.

Everything is made in the test's tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from audit.model import ModelCard, build_network, save_model


def make_model(directory: Path, name: str = "test-model", threshold: float = 0.5, temperature: float = 1.0) -> Path:
    """A randomly initialised model saved as directory/NAME.{safetensors,json}; returns the card."""
    import torch

    torch.manual_seed(0)
    card = ModelCard(name=name, threshold=threshold, temperature=temperature)
    save_model(build_network(card.variant), card, directory / name)
    return directory / f"{name}.json"


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    array = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(array[:, :, 0] if channels == 1 else array, mode=mode)


def jpeg_bytes(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **save_args)
    return buffer.getvalue()


def png_bytes(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_args)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring_size(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG header that declares a huge greyscale image (a bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_with_bad_crc() -> bytes:
    data = bytearray(png_bytes(noise_image(16, 16)))
    # The IHDR chunk's CRC sits at bytes 29..32 (8 signature + 4 length + 4 type + 13 data).
    data[29] ^= 0xFF
    return bytes(data)


def gray16_png() -> bytes:
    """16-bit greyscale: a ramp from 0 to 65535 left to right."""
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (64, 1))
    return png_bytes(Image.fromarray(ramp))  # uint16 -> mode I;16


def cmyk_jpeg() -> bytes:
    return jpeg_bytes(Image.new("CMYK", (32, 32), (0, 255, 255, 0)))  # pure red in CMYK


def palette_png_with_transparency() -> bytes:
    """Palette image: left half colour 0 (transparent), right half colour 1 (black)."""
    image = Image.new("P", (32, 32), 0)
    image.putpalette([255, 0, 0, 0, 0, 0] + [0] * 762)
    image.paste(1, (16, 0, 32, 32))
    return png_bytes(image, transparency=0)


def exif_rotated_jpeg() -> bytes:
    """Stored 64 wide x 32 high, left half black, right half white; EXIF orientation 6 means
    "rotate 90 degrees clockwise to display", so it displays 32 x 64 with black on top."""
    image = Image.new("RGB", (64, 32), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(image, exif=exif.tobytes())


def animated_gif(frames: int = 3) -> bytes:
    images = [Image.new("P", (16, 16), i) for i in range(frames)]
    for image in images:
        image.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return buffer.getvalue()


# name in the archive -> expected status ("ok" / "error") and a fragment of the error message.
BAD_ARCHIVE_EXPECTED: dict[str, tuple[str, str]] = {
    "empty.jpg": ("error", "empty file"),
    "truncated.jpg": ("error", "truncated JPEG"),
    "bad-crc.png": ("error", "corrupt PNG"),
    "notes.jpg": ("error", "not an image"),
    "bomb.png": ("error", "decompression bomb refused"),
    "gray16.png": ("ok", ""),
    "cmyk.jpg": ("ok", ""),
    "palette-alpha.png": ("ok", ""),
    "rotated.jpg": ("ok", ""),
    "animated.gif": ("ok", ""),
    "png-named.jpg": ("ok", ""),
    "no-extension": ("ok", ""),
    "with space.jpg": ("ok", ""),
    "ünïcødé 画像.jpg": ("ok", ""),
    "new\nline.jpg": ("ok", ""),
    "=cmd.jpg": ("ok", ""),
    "unreadable.jpg": ("error", "cannot read file"),  # "ok" when the tests run as root
    "loop": ("error", "symlink loop"),
    "self-loop.jpg": ("error", "symlink loop"),
}


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def build_bad_archive(root: Path) -> dict[str, tuple[str, str]]:
    """Write the issue's bad-input archive under root; return the expected row per path."""
    root.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes(noise_image(40, 30, seed=1))
    truncated = jpeg_bytes(noise_image(64, 64, seed=2))
    files = {
        "empty.jpg": b"",
        "truncated.jpg": truncated[: len(truncated) // 2],
        "bad-crc.png": png_with_bad_crc(),
        "notes.jpg": b"these are my notes, not a picture\n",
        "bomb.png": png_declaring_size(40_000, 40_000),
        "gray16.png": gray16_png(),
        "cmyk.jpg": cmyk_jpeg(),
        "palette-alpha.png": palette_png_with_transparency(),
        "rotated.jpg": exif_rotated_jpeg(),
        "animated.gif": animated_gif(),
        "png-named.jpg": png_bytes(noise_image(20, 20, seed=3)),
        "no-extension": good,
        "with space.jpg": good,
        "ünïcødé 画像.jpg": good,
        "new\nline.jpg": good,
        "=cmd.jpg": good,
        "unreadable.jpg": good,
        "readme.txt": b"not listed: neither an image extension nor image content\n",
        ".hidden.jpg": good,
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / ".hidden-folder").mkdir()
    (root / ".hidden-folder" / "inside.jpg").write_bytes(good)
    (root / "unreadable.jpg").chmod(0)
    # A Latin-1 name that is not valid UTF-8, as old archives hold: its row spells the byte \xe9.
    with open(os.fsencode(root) + b"/caf\xe9.jpg", "wb") as handle:
        handle.write(good)
    os.symlink(".", root / "loop")  # a folder that contains itself
    os.symlink("self-loop.jpg", root / "self-loop.jpg")  # a link to itself (ELOOP)
    expected = dict(BAD_ARCHIVE_EXPECTED)
    expected["caf\\xe9.jpg"] = ("ok", "")
    if running_as_root():
        # root reads a chmod 000 file anyway; tests/test_loading.py covers the error path.
        expected["unreadable.jpg"] = ("ok", "")
    return expected


def write_images(archive: Path, names: list[str], seed: int = 0) -> None:
    """32x32 noise JPEGs under archive, one a name, each from its own seed."""
    archive.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        (archive / name).write_bytes(jpeg_bytes(noise_image(32, 32, seed=seed + index)))
