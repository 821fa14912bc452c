"""The discover stage: archive roots -> an ordered list of file records.

The walk never raises on what it finds in the archive: an unreadable folder, a symlink loop or a
broken link becomes a :class:`FileRecord` with ``error`` set, so that it is a row in the results.

Which files are images is decided in two steps:

* a file whose extension is one of :data:`IMAGE_EXTENSIONS` (any case) is always a candidate; the
  load stage then checks its content (magic bytes), so a ``.jpg`` that holds PNG data is scored and
  a text file named ``.jpg`` becomes an error row "not an image: ...";
* a file with no extension or another extension is sniffed here (its first bytes are read) and
  kept when the content is a supported image format. An archive can hold images renamed to
  ``.dat`` or without an extension (camera dumps, evasion); skipping them silently would hide
  exactly the files an audit is for. The cost is one short read per non-image file.

Order is deterministic: roots in the order given, and inside a root depth-first with the names in
each folder sorted by code point, i.e. sorted by path component by component.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

# Pillow format names of what the audit decodes; the load stage opens a file with exactly one.
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
SNIFF_BYTES = 32

# BMP has a weak 2-byte magic ("BM"); also require a known DIB header size so that a text file
# that happens to start with "BM" is not taken for a bitmap.
_BMP_DIB_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def sniff_format(head: bytes) -> str | None:
    """Return the Pillow format name of an image from its first bytes, or None."""
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_DIB_HEADER_SIZES:
        return "BMP"
    return None


@functools.lru_cache(maxsize=64)
def _absolute(cwd: str, root: str) -> str:
    # One string object per root, shared by all of its records.
    return os.path.normpath(os.path.join(cwd, root))


class FileRecord:
    """One discovered file (or a folder/link that could not be walked, then ``error`` is set).

    A scan holds one record per file for its whole length. The absolute path is not kept when
    it is the absolute root joined with ``rel_path`` (almost always): the root's absolute form is
    one string shared by its records, so a million records take much less memory than with a
    path string each (docs/performance.md, "Memory"). Immutable, compared
    and hashed by value, like the frozen dataclass it replaces.
    """

    __slots__ = ("root", "rel_path", "_absolute_root", "_own_path", "size", "mtime", "error")
    root: str  # the archive root as the user gave it
    rel_path: str  # POSIX path relative to the root; "." for the root itself
    size: int | None
    mtime: float | None
    error: str | None

    def __init__(self, root: str, rel_path: str, abs_path: str, size: int | None = None, mtime: float | None = None,
                 error: str | None = None, absolute_root: str | None = None) -> None:
        # ``absolute_root``: the root made absolute, from a walker that knows it (no getcwd a file).
        absolute_root = absolute_root or _absolute(os.getcwd(), root)
        own_path = None if abs_path == os.path.join(absolute_root, rel_path) else abs_path
        for name, value in (("root", root), ("rel_path", rel_path), ("_absolute_root", absolute_root),
                            ("_own_path", own_path), ("size", size), ("mtime", mtime), ("error", error)):
            object.__setattr__(self, name, value)

    @property
    def abs_path(self) -> str:
        """The path the file is opened by (the real bytes of a name that is not UTF-8)."""
        if self._own_path is not None:
            return self._own_path
        return os.path.join(self._absolute_root, self.rel_path)

    def _fields(self) -> tuple:
        return (self.root, self.rel_path, self.abs_path, self.size, self.mtime, self.error)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"FileRecord is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"FileRecord is immutable (cannot delete {name!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FileRecord):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __reduce__(self) -> tuple:
        # The absolute root travels too: a record unpickled from a decode worker (one a file)
        # does not ask for the working directory again.
        return (FileRecord, (*self._fields(), self._absolute_root))

    def __repr__(self) -> str:
        root, rel_path, abs_path, size, mtime, error = self._fields()
        return (f"FileRecord(root={root!r}, rel_path={rel_path!r}, abs_path={abs_path!r}, size={size!r}, "
                f"mtime={mtime!r}, error={error!r})")


@dataclass(frozen=True)
class DiscoverOptions:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False


def matches_any(rel_path: str, patterns: Iterable[str]) -> bool:
    """gitignore-like glob matching: a pattern without '/' matches the file name at any depth,
    a pattern with '/' matches the whole relative path ('*' also crosses '/'). Case-sensitive."""
    name = rel_path.rsplit("/", 1)[-1]
    for pattern in patterns:
        target = rel_path if "/" in pattern else name
        if fnmatch.fnmatchcase(target, pattern.strip("/")):
            return True
    return False


def _describe_os_error(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def _has_image_content(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return sniff_format(handle.read(SNIFF_BYTES)) is not None
    except OSError:
        # Unreadable and not named like an image: we cannot know it is one, so it is not listed.
        return False


def printable_name(name: str) -> str:
    """A file name as text that any UTF-8 output can hold.

    A name that is not valid UTF-8 reaches Python with surrogate escapes, which the CSV, the
    XLSX and SQLite refuse to encode; its undecodable bytes are written as \\xNN instead. The
    file itself is still opened through ``abs_path``, which keeps the real bytes.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class _Walker:
    def __init__(self, root: str, options: DiscoverOptions) -> None:
        self.root = root
        self.options = options
        self.absolute_root = _absolute(os.getcwd(), root)

    def _record(self, rel: str, abs_path: str, st: os.stat_result | None = None, error: str | None = None) -> FileRecord:
        return FileRecord(
            root=printable_name(self.root),
            rel_path=printable_name(rel),
            abs_path=abs_path,
            absolute_root=self.absolute_root,
            size=st.st_size if st else None,
            mtime=st.st_mtime if st else None,
            error=error,
        )

    def walk(self, folder: str, rel: str, ancestors: frozenset[tuple[int, int]]) -> Iterator[FileRecord]:
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            yield self._record(rel, folder, error=f"cannot read folder: {_describe_os_error(exc)}")
            return
        for entry in entries:
            yield from self._visit(entry, f"{rel}/{entry.name}" if rel != "." else entry.name, ancestors)

    def _visit(self, entry: os.DirEntry, rel: str, ancestors: frozenset[tuple[int, int]]) -> Iterator[FileRecord]:
        if not self.options.include_hidden and entry.name.startswith("."):
            return
        try:
            st = entry.stat(follow_symlinks=True)
        except OSError as exc:
            yield from self._unstattable(entry, rel, exc)
            return
        if stat.S_ISDIR(st.st_mode):
            if matches_any(rel, self.options.exclude):
                return
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                target = os.readlink(entry.path) if entry.is_symlink() else "?"
                yield self._record(rel, entry.path, error=f"symlink loop: points back to an enclosing folder ({target})")
                return
            yield from self.walk(entry.path, rel, ancestors | {key})
        elif stat.S_ISREG(st.st_mode):
            if self._selected(rel) and self._is_candidate(entry):
                yield self._record(rel, entry.path, st)

    def _unstattable(self, entry: os.DirEntry, rel: str, exc: OSError) -> Iterator[FileRecord]:
        """A name we cannot stat: a broken or looping symlink, or a vanished file."""
        if not self._selected(rel):
            return
        if entry.is_symlink():
            looping = getattr(exc, "errno", None) == 40  # ELOOP
            what = "symlink loop" if looping else "broken symlink"
            yield self._record(rel, entry.path, error=f"{what}: {_describe_os_error(exc)}")
        elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            yield self._record(rel, entry.path, error=f"cannot stat file: {_describe_os_error(exc)}")

    def _selected(self, rel: str) -> bool:
        if self.options.include and not matches_any(rel, self.options.include):
            return False
        return not matches_any(rel, self.options.exclude)

    @staticmethod
    def _is_candidate(entry: os.DirEntry) -> bool:
        if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
            return True
        return _has_image_content(entry.path)


def _skip_files_of_earlier_roots(records: Iterator[FileRecord], earlier: set[str]) -> Iterator[FileRecord]:
    """Drop files an earlier root already listed; add this root's files to ``earlier`` after it."""
    this_root: set[str] = set()
    for record in records:
        if record.error is None:
            real = os.path.realpath(record.abs_path)
            if real in earlier:
                continue
            this_root.add(real)
        yield record
    earlier |= this_root


def discover(roots: Iterable[str | os.PathLike[str]], options: DiscoverOptions = DiscoverOptions()) -> Iterator[FileRecord]:
    """Yield file records for every image under the roots, in a deterministic order.

    A root may be a folder or a single file. The same folder given twice is walked once.
    """
    seen_roots: set[tuple[int, int]] = set()
    # Overlapping roots (`audit scan photos photos/2024`) would list a file twice.
    files_of_earlier_roots: set[str] = set()
    roots = list(roots)
    for given in roots:
        root = os.fspath(given)
        walker = _Walker(root, options)
        try:
            st = os.stat(root)
        except OSError as exc:
            yield FileRecord(root=root, rel_path=".", abs_path=os.path.abspath(root), error=f"cannot read archive root: {_describe_os_error(exc)}")
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_roots:
            continue
        seen_roots.add(key)
        if stat.S_ISDIR(st.st_mode):
            records = walker.walk(os.path.abspath(root), ".", frozenset({key}))
            if len(roots) > 1:
                records = _skip_files_of_earlier_roots(records, files_of_earlier_roots)
            yield from records
        else:
            # A single file given as the archive: its folder is the root, so the path is its name.
            abs_path = os.path.abspath(root)
            if len(roots) > 1:
                real = os.path.realpath(abs_path)
                if real in files_of_earlier_roots:
                    continue
                files_of_earlier_roots.add(real)
            yield FileRecord(
                root=os.path.dirname(root) or ".",
                rel_path=os.path.basename(abs_path),
                abs_path=abs_path,
                size=st.st_size,
                mtime=st.st_mtime,
            )
