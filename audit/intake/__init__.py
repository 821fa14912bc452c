"""Discover and load: an archive's files in a stable order (:func:`discover`), and each file read
once into its hashes, dimensions, provenance evidence and the model's input (:func:`load_image`).
Bad files become values, never exceptions.
"""

from __future__ import annotations

from audit.intake._discover import DiscoverOptions, FileRecord, discover, matches_any, printable_name, sniff_format
from audit.intake._load import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PIXELS,
    LoadOptions,
    LoadResult,
    load_bytes,
    load_image,
    read_file_bytes,
    strict_pillow,
    to_rgb,
)

__all__ = ["DEFAULT_MAX_FILE_BYTES", "DEFAULT_MAX_PIXELS", "DiscoverOptions", "FileRecord", "LoadOptions", "LoadResult", "discover", "load_bytes", "load_image", "matches_any", "printable_name", "read_file_bytes", "sniff_format", "strict_pillow", "to_rgb"]
