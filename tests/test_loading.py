"""The load stage: every awkward file becomes either the right pixels or a clear error value."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scan_fixtures import (
    animated_gif,
    cmyk_jpeg,
    exif_rotated_jpeg,
    gray16_png,
    jpeg_bytes,
    noise_image,
    palette_png_with_transparency,
    png_bytes,
    png_declaring_size,
    png_with_bad_crc,
)

import audit.intake._load as loading
from audit.intake import FileRecord, LoadOptions, load_image
from audit.model import Preprocessing

REPO = Path(__file__).resolve().parents[1]


def load_bytes(tmp_path: Path, name: str, data: bytes, **options) -> loading.LoadResult:
    path = tmp_path / name
    path.write_bytes(data)
    record = FileRecord(root=str(tmp_path), rel_path=name, abs_path=str(path), size=len(data))
    return load_image(record, LoadOptions(**options))


def pixels(result: loading.LoadResult) -> np.ndarray:
    """The model input as an HxWxC uint8 array."""
    assert result.error is None, result.error
    assert result.tensor is not None and result.tensor.dtype.is_floating_point is False
    return result.tensor.permute(1, 2, 0).numpy()


def test_ok_image_has_hash_size_format_and_model_input(tmp_path: Path) -> None:
    import hashlib

    data = jpeg_bytes(noise_image(40, 30))
    result = load_bytes(tmp_path, "a.jpg", data)
    assert (result.sha256, result.n_bytes, result.format) == (hashlib.sha256(data).hexdigest(), len(data), "JPEG")
    assert (result.width, result.height) == (40, 30)
    assert tuple(result.tensor.shape) == (3, 32, 32)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.jpg", b"", "empty file (0 bytes)"),
        ("notes.jpg", b"hello, I am text\n", "not an image: content is not JPEG/PNG/GIF/WEBP/BMP/TIFF"),
        ("bad-crc.png", png_with_bad_crc(), "corrupt PNG file: broken PNG file (bad header checksum in b'IHDR')"),
        ("bomb.png", png_declaring_size(40_000, 40_000), "decompression bomb refused: 40000x40000 = 1,600,000,000 pixels is over the limit of 100,000,000"),
    ],
)
def test_bad_files_are_error_values_with_clear_messages(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    result = load_bytes(tmp_path, name, data)
    assert result.tensor is None
    assert result.error is not None and result.error.startswith(message), result.error
    assert result.n_bytes == len(data)  # the bytes were read and hashed even though they are bad


@pytest.mark.parametrize("global_setting", [False, True])
def test_truncated_jpeg_is_an_error_not_a_partly_grey_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, global_setting: bool
) -> None:
    """Even when other code (WeasyPrint does, on import) turns LOAD_TRUNCATED_IMAGES on."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", global_setting)
    data = jpeg_bytes(noise_image(64, 64, seed=2))
    result = load_bytes(tmp_path, "t.jpg", data[: len(data) // 2])
    assert result.error is not None and result.error.startswith("truncated JPEG file: image file is truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is global_setting  # restored afterwards


def test_bomb_keeps_its_declared_size_in_the_row(tmp_path: Path) -> None:
    result = load_bytes(tmp_path, "bomb.png", png_declaring_size(40_000, 30_000))
    assert (result.width, result.height) == (40_000, 30_000)


def test_max_pixels_is_configurable(tmp_path: Path) -> None:
    data = png_bytes(noise_image(100, 100))
    assert load_bytes(tmp_path, "a.png", data, max_pixels=10_000).ok
    refused = load_bytes(tmp_path, "a.png", data, max_pixels=9_999)
    assert refused.error is not None and "100x100 = 10,000 pixels is over the limit of 9,999 (--max-pixels)" in refused.error


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_refused_bomb_keeps_memory_bounded(tmp_path: Path) -> None:
    """In a fresh process: refusing a 9 MP image (limit 1 MP) must not allocate its pixels,
    while decoding the same file under a higher limit does (the control shows the measure works).
    The peak RSS (VmHWM) is reset before each load by writing 5 to /proc/self/clear_refs."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from PIL import Image
        from audit.intake import FileRecord
        from audit.intake import LoadOptions, load_image

        path = sys.argv[1]
        Image.fromarray(np.zeros((3000, 3000), np.uint8)).save(path)  # compresses to a few KB
        record = FileRecord(root=".", rel_path="bomb.png", abs_path=path)

        def status_mb(field):
            for line in open("/proc/self/status"):
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024

        def peak_growth_mb(max_pixels):
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # reset the peak to the current RSS
            before = status_mb("VmRSS")
            result = load_image(record, LoadOptions(max_pixels=max_pixels))
            return status_mb("VmHWM") - before, result

        load_image(record, LoadOptions(max_pixels=100))  # warm up imports and allocators
        refused_mb, refused = peak_growth_mb(1_000_000)
        decoded_mb, decoded = peak_growth_mb(10_000_000)
        assert refused.error and "decompression bomb refused" in refused.error, refused.error
        assert decoded.error is None, decoded.error
        print(refused_mb, decoded_mb)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "bomb.png")],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    refused_growth_mb, decoded_growth_mb = float(out[0]), float(out[1])
    assert refused_growth_mb < 2, f"refusing grew the peak RSS by {refused_growth_mb:.1f} MB"
    assert decoded_growth_mb > 8, f"control: decoding 9 MP grew the peak RSS by only {decoded_growth_mb:.1f} MB"


def test_unreadable_file_is_an_error_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000 does not stop root, so the permission failure is simulated at open()."""
    path = tmp_path / "locked.jpg"
    path.write_bytes(jpeg_bytes(noise_image(8, 8)))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(loading, "open", refuse, raising=False)
    result = load_image(FileRecord(root=str(tmp_path), rel_path="locked.jpg", abs_path=str(path)), LoadOptions())
    assert result.error == "cannot read file: Permission denied"


def test_discovery_error_passes_through_unread(tmp_path: Path) -> None:
    record = FileRecord(root=str(tmp_path), rel_path="x", abs_path=str(tmp_path / "x"), error="symlink loop: x")
    assert load_image(record, LoadOptions()).error == "symlink loop: x"


def test_file_over_the_byte_limit_is_refused_before_reading(tmp_path: Path) -> None:
    result = load_bytes(tmp_path, "big.jpg", jpeg_bytes(noise_image(32, 32)), max_file_bytes=100)
    assert result.error is not None and result.error.startswith("file too large to audit")


# --------------------------------------------------------------------------- modes


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    result = load_bytes(tmp_path, "g.png", gray16_png(), preprocessing=Preprocessing(input_size=64))
    row = pixels(result)[0, :, 0].astype(int)
    # The ramp 0..65535 becomes 0..255; clipping would make almost every pixel 255.
    assert row[0] == 0 and row[-1] == 255
    assert abs(row[32] - round(32 / 63 * 255)) <= 1
    assert np.all(np.diff(row) >= 0)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    red = pixels(load_bytes(tmp_path, "c.jpg", cmyk_jpeg())).reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[1] < 50 and red[2] < 50, red


def test_palette_transparency_is_composited_on_white(tmp_path: Path) -> None:
    image = pixels(load_bytes(tmp_path, "p.png", palette_png_with_transparency()))
    assert image[:, :14].min() == 255  # transparent red -> the white background
    assert image[:, 18:].max() == 0  # opaque black stays black


def test_rgba_is_composited_on_the_cards_background(tmp_path: Path) -> None:
    data = png_bytes(Image.new("RGBA", (32, 32), (255, 0, 0, 0)))
    pre = Preprocessing(alpha_background=(0, 128, 255))
    image = pixels(load_bytes(tmp_path, "a.png", data, preprocessing=pre))
    assert tuple(image[5, 5]) == (0, 128, 255)


@pytest.mark.parametrize("mode", ["L", "LA", "1"])
def test_other_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    data = png_bytes(Image.new(mode, (10, 10)))
    assert pixels(load_bytes(tmp_path, "m.png", data)).shape == (32, 32, 3)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    result = load_bytes(tmp_path, "r.jpg", exif_rotated_jpeg(), preprocessing=Preprocessing(input_size=32))
    assert (result.width, result.height) == (32, 64)  # as displayed
    image = pixels(result).astype(int)
    # Stored: black left, white right; rotated 90 degrees clockwise: black on top.
    assert image[:12].mean() < 30 and image[20:].mean() > 225


def test_animated_gif_scores_the_first_frame_and_says_so(tmp_path: Path) -> None:
    result = load_bytes(tmp_path, "a.gif", animated_gif(frames=4))
    assert result.ok and result.note == "animated: first of 4 frames scored"


@pytest.mark.parametrize(("image_format", "note"), [("WEBP", "animated: first of 3 frames scored"),
                                                    ("PNG", "animated: first of 3 frames scored"),
                                                    ("TIFF", "multi-page: first of 3 pages scored")])
def test_multi_frame_formats_say_which_frame_was_scored(tmp_path: Path, image_format: str, note: str) -> None:
    import io

    frames = [Image.new("RGB", (16, 16), (80 * i, 0, 0)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=image_format, save_all=True, append_images=frames[1:])
    result = load_bytes(tmp_path, f"multi.{image_format.lower()}", buffer.getvalue())
    assert result.ok and result.format == image_format and result.note == note
    assert pixels(result)[0, 0, 0] == 0  # the first frame (black), not a later one


def test_content_decides_the_format(tmp_path: Path) -> None:
    result = load_bytes(tmp_path, "really-a-png.jpg", png_bytes(noise_image(8, 8)))
    assert result.ok and result.format == "PNG"


# --------------------------------------------------------------------------- draft decoding


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour regions, sensor-like noise and hard-edged strokes: harder than a photo."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (height // 100, width // 100, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy)
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        end = (x + int(rng.integers(-width // 3, width // 3)), y + int(rng.integers(-height // 3, height // 3)))
        draw.line([(x, y), end], fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(2, 30)))
    return image


# Measured on photo_like JPEGs (quality 90) at 4000x3000, 2000x1500 and 1000x750, input 32:
# mean |draft - full| 0.10, 1.31, 0.88 and max 1, 9, 10 (0-255 scale). Stated tolerance:
DRAFT_MEAN_ABS_TOLERANCE = 2.0
DRAFT_MAX_ABS_TOLERANCE = 16


def test_draft_decoding_matches_full_decode_and_resize(tmp_path: Path) -> None:
    data = jpeg_bytes(photo_like(2000, 1500))
    full = load_bytes(tmp_path, "p.jpg", data, draft=False).tensor.float()
    draft = load_bytes(tmp_path, "p.jpg", data, draft=True).tensor.float()
    difference = (draft - full).abs()
    assert difference.mean() < DRAFT_MEAN_ABS_TOLERANCE and difference.max() <= DRAFT_MAX_ABS_TOLERANCE


def test_draft_really_decodes_at_reduced_size(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    original = loading.to_model_input

    def spy(image, pre, **options):
        seen.append(image.size)
        return original(image, pre, **options)

    monkeypatch.setattr(loading, "to_model_input", spy)
    load_bytes(tmp_path, "p.jpg", jpeg_bytes(noise_image(1024, 768)), draft=True)
    load_bytes(tmp_path, "p.jpg", jpeg_bytes(noise_image(1024, 768)), draft=False)
    # 1/8 scale keeps >= 2 x 32 px a side (128 x 96); without draft the full 1024 x 768.
    assert seen == [(128, 96), (1024, 768)]
