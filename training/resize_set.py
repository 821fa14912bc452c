"""Shrink a SPLIT/REAL|FAKE data set: ``python -m training resize-set SRC DST.zip --max-side 128``.

Every image goes through the same steps, whatever its label (as wild.zip itself was made):
EXIF orientation, alpha composited onto white, RGB, Lanczos downscale so the longer side is at
most ``--max-side`` (never upscaled), JPEG at ``--quality``. A smaller copy travels to a
training machine with little bandwidth; the copy's sha256 and its source's are printed for the
model card.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

from PIL import Image, ImageOps

from audit.atomic import atomic_path
from audit.model import file_sha256
from training.data import iter_files


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Shrink an image data set laid out as SPLIT/REAL|FAKE", add_help=add_help)
    parser.add_argument("source", help="folder or zip")
    parser.add_argument("output", help="zip to write")
    parser.add_argument("--max-side", type=int, default=128)
    parser.add_argument("--quality", type=int, default=88)
    parser.add_argument("--splits", default="train,val,test", help="splits to copy (those present)")
    return parser


def shrink(data: bytes, max_side: int, quality: int) -> bytes:
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        image = image.convert("RGB")
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()


def main(args: argparse.Namespace) -> Path:
    output = Path(args.output)
    count = 0
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for split in args.splits.split(","):
            for name, _label, data in iter_files(Path(args.source), split):
                archive.writestr(name, shrink(data, args.max_side, args.quality))
                count += 1
    source = Path(args.source)
    source_hash = file_sha256(source) if source.is_file() else "(a folder)"
    print(f"{output}: {count} images, sha256 {file_sha256(output)}; from {source} sha256 {source_hash}; "
          f"longer side <= {args.max_side} px, JPEG q{args.quality}")
    return output
