"""Rebuild an open data set from its manifest: ``python -m training data rebuild MANIFEST OUT``.

Every manifest row names a file in a public git repository (``source_repo``, ``commit``,
``source_path``) and the sha256 of its bytes. ``rebuild`` takes each file from its repository at
that commit, checks the sha256 (a file that does not match is reported and never written), and
writes:

- ``OUT/originals/<source_repo>/<source_path>``: the original bytes, for work at native resolution;
- ``OUT/copy/<file>``: the training copy, which gives every image the same delivery (below), and
  whose sha256 is checked against ``copy_sha256``.

The repositories come from ``git clone`` (https://github.com/OWNER/NAME, cached in
``OUT/.git-cache``), or, with ``--snapshots DIR``, from a folder of bare repositories laid out as
the session tool ``fetch`` lays them out (``DIR/OWNER+NAME/repo``, or ``DIR/OWNER+NAME/repo/.git`` for a snapshot
with a work tree; ``DIR/OWNER+NAME`` and ``DIR/OWNER/NAME[.git]`` work too).

The training copy (``training_copy``): EXIF orientation applied, alpha composited on white, RGB,
Lanczos downscale so that the longer side is a value drawn from [192, 512] (never upscaled), JPEG
at a quality drawn from [70, 95], no metadata. The draws are seeded by the original's sha256, so
the copy is the same byte for byte with the same Pillow. Then neither format, metadata nor size
tells the classes apart.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from PIL import Image, ImageOps

MIN_SIDE, MAX_SIDE = 192, 512
MIN_QUALITY, MAX_QUALITY = 70, 95
DEFAULT_REMOTE = "https://github.com/{repo}.git"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Open data sets rebuilt from public git repositories", add_help=add_help)
    commands = parser.add_subparsers(dest="command", required=True)
    rebuild = commands.add_parser("rebuild", help="take each manifest file from its repository at its commit, check it, write originals and the training copy")
    rebuild.add_argument("manifest", help="MANIFEST.tsv (one row per file)")
    rebuild.add_argument("output", help="folder to write originals/ and copy/ into")
    rebuild.add_argument("--snapshots", help="folder of bare repositories (OWNER+NAME/repo, as `fetch` lays them out); without it, git clone")
    rebuild.add_argument("--remote", default=DEFAULT_REMOTE, help="clone URL template, {repo} is OWNER/NAME (default: %(default)s)")
    rebuild.add_argument("--cache", help="where clones are kept (default: OUTPUT/.git-cache)")
    rebuild.add_argument("--copy-dir", help="where the training copy goes (default: OUTPUT/copy)")
    rebuild.add_argument("--originals-dir", help="where the originals go (default: OUTPUT/originals)")
    only = rebuild.add_mutually_exclusive_group()
    only.add_argument("--copy-only", action="store_true", help="write the training copy only")
    only.add_argument("--originals-only", action="store_true", help="write the originals only")
    return parser


def draws(sha256: str) -> tuple[int, int]:
    """The longer side and the JPEG quality of a file's training copy, seeded by its sha256."""
    rng = random.Random(int(sha256[:16], 16))
    return rng.randint(MIN_SIDE, MAX_SIDE), rng.randint(MIN_QUALITY, MAX_QUALITY)


def training_copy(data: bytes, sha256: str | None = None) -> tuple[bytes, int, int, int]:
    """The training copy of an image's bytes: (JPEG bytes, width, height, quality)."""
    sha256 = sha256 or hashlib.sha256(data).hexdigest()
    side, quality = draws(sha256)
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = image.point(lambda v: v / 256).convert("L")
        if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        image = image.convert("RGB")
    width, height = image.size
    target = min(side, max(width, height))
    if max(width, height) > target:
        scale = target / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if width >= height:
            size = (target, size[1])
        else:
            size = (size[0], target)
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    clean = Image.new("RGB", image.size)  # a fresh image: no EXIF, ICC or other metadata travels
    clean.paste(image)
    buffer = io.BytesIO()
    clean.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), clean.size[0], clean.size[1], quality


def snapshot_git_dir(snapshots: Path, repo: str) -> Path | None:
    """The bare git dir for OWNER/NAME in a folder of snapshots, or None."""
    owner, name = repo.split("/", 1)
    for candidate in (snapshots / f"{owner}+{name}" / "repo", snapshots / f"{owner}+{name}" / "repo" / ".git", snapshots / f"{owner}+{name}",
                      snapshots / owner / name, snapshots / owner / f"{name}.git"):
        if (candidate / "HEAD").is_file() and (candidate / "objects").is_dir():
            return candidate
    return None


def clone_git_dir(cache: Path, repo: str, remote: str) -> Path | None:
    """A bare clone of OWNER/NAME in the cache (cloned the first time), or None when it fails."""
    target = cache / (repo.replace("/", "+") + ".git")
    if not (target / "HEAD").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["git", "clone", "--bare", "--quiet", remote.format(repo=repo), str(target)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"  {repo}: git clone failed: {done.stderr.strip()}", file=sys.stderr)
            return None
    return target


class BlobReader:
    """``git cat-file --batch`` on one repository: the bytes of COMMIT:PATH, or None when absent."""

    def __init__(self, git_dir: Path):
        self.git_dir = git_dir
        self.process = subprocess.Popen(["git", f"--git-dir={git_dir}", "cat-file", "--batch"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def read(self, commit: str, path: str) -> bytes | None:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(f"{commit}:{path}\n".encode())
        self.process.stdin.flush()
        header = self.process.stdout.readline().decode().split()
        if len(header) != 3:  # "<spec> missing" (or ambiguous)
            return None
        size = int(header[2])
        data = self.process.stdout.read(size)
        self.process.stdout.read(1)  # the newline after the contents
        return data if header[1] == "blob" else None

    def fetch_commit(self, commit: str) -> None:
        """For a clone that lacks the commit (a branch since rewritten): ask the remote for it."""
        subprocess.run(["git", f"--git-dir={self.git_dir}", "fetch", "--quiet", "origin", commit], capture_output=True)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait()


def read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def _inside(root: Path, relative: str) -> Path:
    """root/relative, refusing a manifest path that would leave root."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ValueError(f"path leaves the output folder: {relative}")
    return target


def rebuild(args: argparse.Namespace) -> int:
    started = time.monotonic()
    output = Path(args.output)
    originals_dir = Path(args.originals_dir) if args.originals_dir else output / "originals"
    copy_dir = Path(args.copy_dir) if args.copy_dir else output / "copy"
    cache = Path(args.cache) if args.cache else output / ".git-cache"
    rows = read_manifest(Path(args.manifest))
    counts: Counter[str] = Counter()
    problems: list[str] = []
    by_repo: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_repo.setdefault(row["source_repo"], []).append(row)
    for repo in sorted(by_repo):
        repo_rows = by_repo[repo]
        if args.snapshots:
            git_dir = snapshot_git_dir(Path(args.snapshots), repo)
            if git_dir is None:
                problems.extend(f"missing: {repo}: no snapshot in {args.snapshots}" for _ in repo_rows[:1])
                counts["missing"] += len(repo_rows)
                continue
        else:
            git_dir = clone_git_dir(cache, repo, args.remote)
            if git_dir is None:
                problems.append(f"missing: {repo}: could not clone")
                counts["missing"] += len(repo_rows)
                continue
        reader = BlobReader(git_dir)
        try:
            for row in repo_rows:
                where = f"{repo}@{row['commit'][:12]}:{row['source_path']}"
                data = reader.read(row["commit"], row["source_path"])
                if data is None and not args.snapshots:
                    reader.fetch_commit(row["commit"])
                    data = reader.read(row["commit"], row["source_path"])
                if data is None:
                    counts["missing"] += 1
                    problems.append(f"missing: {where}")
                    continue
                if hashlib.sha256(data).hexdigest() != row["sha256"]:
                    counts["mismatch"] += 1
                    problems.append(f"sha256 mismatch (not written): {where}")
                    continue
                if not args.copy_only:
                    _write(_inside(originals_dir, f"{repo}/{row['source_path']}"), data)
                    counts["originals"] += 1
                if not args.originals_only:
                    try:
                        copy, _w, _h, _q = training_copy(data, row["sha256"])
                    except Exception as exc:  # an image Pillow cannot decode here: reported, never fatal
                        counts["copy_failed"] += 1
                        problems.append(f"training copy failed ({type(exc).__name__}: {exc}): {where}")
                        continue
                    _write(_inside(copy_dir, row["file"]), copy)
                    counts["copies"] += 1
                    if row.get("copy_sha256") and hashlib.sha256(copy).hexdigest() != row["copy_sha256"]:
                        counts["copy_mismatch"] += 1
                        problems.append(f"training copy differs from the manifest's copy_sha256 (another Pillow?): {row['file']}")
                counts["ok"] += 1
        finally:
            reader.close()
    for problem in problems[:50]:
        print(problem, file=sys.stderr)
    if len(problems) > 50:
        print(f"... and {len(problems) - 50} more", file=sys.stderr)
    seconds = time.monotonic() - started
    print(f"{len(rows)} rows from {len(by_repo)} repositories: {counts['ok']} verified, "
          f"{counts['originals']} originals and {counts['copies']} training copies written, "
          f"{counts['missing']} missing, {counts['mismatch']} sha256 mismatches, "
          f"{counts['copy_mismatch']} copy mismatches, {counts['copy_failed']} copies failed; {seconds:.1f} s")
    return 1 if counts["missing"] or counts["mismatch"] or counts["copy_mismatch"] or counts["copy_failed"] else 0


def main(args: argparse.Namespace) -> int:
    if args.command == "rebuild":
        return rebuild(args)
    raise AssertionError(args.command)
