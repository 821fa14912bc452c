"""How MANIFEST.tsv was made (a record; the data set is rebuilt with `python -m training data rebuild`).

    python3 datasets/open-generators/build.py scan   # FAKE candidates from the sources in sources.py
    python3 datasets/open-generators/build.py merge  # + REAL candidates: dedup, caps, split, manifest, copies

Works on repository snapshots (as `fetch` lays them out, --snapshots) and writes its work files
under --data (default /work/data/open-generators). Deterministic: sorting and a fixed seed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import random
import re
import subprocess
import sys
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

import imagehash  # noqa: E402
from sources import SOURCES  # noqa: E402

from training.open_data import BlobReader, snapshot_git_dir, training_copy  # noqa: E402

Image.MAX_IMAGE_PIXELS = 200_000_000
CANDIDATE_COLUMNS = ["label", "generator", "family", "year", "source_repo", "commit", "source_path", "licence", "use", "note"]
INFO_COLUMNS = ["sha256", "orig_format", "orig_width", "orig_height", "orig_bytes", "phash", "frames", "copy_sha256", "copy_width", "copy_height", "jpeg_quality", "error"]
MANIFEST_COLUMNS = ["split", "label", "generator", "family", "year", "use", "file", "source_repo", "commit", "source_path",
                    "orig_format", "orig_width", "orig_height", "orig_bytes", "sha256", "copy_sha256", "copy_width", "copy_height",
                    "jpeg_quality", "licence", "note"]
IMAGE_EXT = re.compile(r"\.(png|jpe?g|webp|bmp|tiff?)$", re.I)
MIN_SHORT_SIDE = 128
MAX_PIXELS = 50_000_000
PER_GENERATOR, PER_REPO = 1500, 2000
SEED = 20261207
# Repositories left out after looking at their images, with the reason (recorded in removed.tsv).
EXCLUDED = {
    "google/libultrahdr": "REAL candidates that are emulator test images, not photographs",
}


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader((line for line in handle if not line.startswith("#")), delimiter="\t")]


def write_tsv(path: Path, columns: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, delimiter="\t", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in columns})
    tmp.replace(path)


def ls_tree(git_dir: Path, commit: str) -> list[tuple[str, int]]:
    out = subprocess.run(["git", f"--git-dir={git_dir}", "ls-tree", "-r", "-z", "--long", commit], capture_output=True, check=True).stdout
    entries = []
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, path = record.split(b"\t", 1)
        parts = meta.split()
        if parts[1] != b"blob" or not parts[3].isdigit():  # "-" or "BAD": absent from the snapshot
            continue
        entries.append((path.decode("utf-8", "surrogateescape"), int(parts[3])))
    return entries


def describe(data: bytes) -> dict:
    """Format, size, frames, perceptual hash and the training copy of one image's bytes."""
    sha = hashlib.sha256(data).hexdigest()
    info = {"sha256": sha, "orig_bytes": len(data)}
    try:
        with Image.open(io.BytesIO(data)) as image:
            info.update(orig_format=image.format, orig_width=image.size[0], orig_height=image.size[1],
                        frames=getattr(image, "n_frames", 1))
            image.draft("RGB", (256, 256))
            info["phash"] = str(imagehash.phash(image.convert("RGB")))
        copy, width, height, quality = training_copy(data, sha)
        info.update(copy_sha256=hashlib.sha256(copy).hexdigest(), copy_width=width, copy_height=height, jpeg_quality=quality)
    except Exception as exc:  # an unreadable or odd file: recorded and left out
        info["error"] = f"{type(exc).__name__}: {exc}"[:200]
    return info


class InfoCache:
    """sha256-keyed facts about images (work/info.tsv), so that a rerun decodes nothing twice."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = {row["sha256"]: row for row in read_tsv(path)} if path.exists() else {}
        self.blob_sha: dict[str, str] = {}
        self.dirty = 0

    def get(self, reader: BlobReader, commit: str, path: str) -> dict | None:
        data = reader.read(commit, path)
        if data is None:
            return None
        sha = hashlib.sha256(data).hexdigest()
        if sha not in self.rows:
            self.rows[sha] = {key: str(value) for key, value in describe(data).items()}
            self.dirty += 1
            if self.dirty % 500 == 0:
                self.save()
        return self.rows[sha]

    def save(self) -> None:
        write_tsv(self.path, INFO_COLUMNS, sorted(self.rows.values(), key=lambda row: row["sha256"]))


def head_commit(git_dir: Path) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def scan(args: argparse.Namespace) -> None:
    data_dir = Path(args.data)
    rows = []
    skipped = Counter()
    for source in SOURCES:
        repo = source["repo"]
        if args.only and repo not in args.only.split(","):
            continue
        git_dir = snapshot_git_dir(Path(args.snapshots), repo)
        if git_dir is None:
            print(f"{repo}: no snapshot", file=sys.stderr)
            continue
        commit = head_commit(git_dir)
        rules = [(re.compile(pattern, re.IGNORECASE), labeller) for pattern, labeller in source["rules"]]
        count = 0
        entries = [(commit, path, size) for path, size in ls_tree(git_dir, commit)]
        if source.get("history"):
            entries = history_entries(git_dir, entries)
        for commit, path, size in entries:
            if not IMAGE_EXT.search(path) or size < 8_000 or size >= 4 * 1024 * 1024:
                continue
            for pattern, labeller in rules:
                if pattern.search(path):
                    label = labeller(path)
                    if label is None:
                        skipped["no generator"] += 1
                        break
                    generator, family, year = label
                    rows.append(dict(label="FAKE", generator=generator, family=family, year=year or "", source_repo=repo,
                                     commit=commit, source_path=path, licence=source["licence"], use=source["use"], note=source["note"]))
                    count += 1
                    break
        print(f"{repo}: {count} candidates", file=sys.stderr)
    rows.sort(key=lambda row: (row["source_repo"], row["source_path"]))
    write_tsv(data_dir / "candidates-fake.tsv", CANDIDATE_COLUMNS, rows)
    print(f"{len(rows)} FAKE candidates; {dict(skipped)}")


def history_entries(git_dir: Path, head: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Every version of every image path in the history (the HEAD version first): (commit, path, size), one per blob."""
    log = subprocess.run(["git", f"--git-dir={git_dir}", "log", "--all", "--no-renames", "--diff-filter=AM", "--name-only",
                          "--format=C %H", "-z"], capture_output=True, check=True).stdout.decode("utf-8", "surrogateescape")
    pairs = [(commit, path) for commit, path, _size in head]
    commit = ""
    for token in log.replace("\n", "\0").split("\0"):
        if token.startswith("C ") and len(token) == 42:
            commit = token[2:]
        elif token and IMAGE_EXT.search(token):
            pairs.append((commit, token))
    check = subprocess.run(["git", f"--git-dir={git_dir}", "cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)"],
                           input="".join(f"{c}:{p}\n" for c, p in pairs).encode("utf-8", "surrogateescape"), capture_output=True).stdout.decode()
    seen, out = set(), []
    for (commit, path), line in zip(pairs, check.splitlines()):
        parts = line.split()
        if len(parts) != 3 or parts[1] != "blob" or parts[0] in seen:
            continue
        seen.add(parts[0])
        out.append((commit, path, int(parts[2])))
    return out


def wild_phashes(path: Path) -> list[tuple[str, imagehash.ImageHash]]:
    cache = path.parent / "wild-phash.tsv" if False else None  # noqa: F841
    out = []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if name.endswith("/"):
                continue
            with Image.open(io.BytesIO(archive.read(name))) as image:
                out.append((name, imagehash.phash(image.convert("RGB"))))
    return out


def merge(args: argparse.Namespace) -> None:
    data_dir = Path(args.data)
    work = data_dir / "work"
    cache = InfoCache(work / "info.tsv")
    candidates = read_tsv(data_dir / "candidates-fake.tsv")
    real_path = data_dir / "candidates-real.tsv"
    if real_path.exists():
        candidates += read_tsv(real_path)
    removed: Counter[str] = Counter()
    # the wild manifest: its (repo, path) pairs and stored-copy sha256s; cifake's sha256s
    wild = read_tsv(Path(args.wild_manifest))
    wild_pairs = {(row["source_repo"], row["source_path"]) for row in wild}
    known_sha = {row["sha256"] for row in wild} | {row["sha256"] for row in read_tsv(Path(args.cifake_manifest))}
    held_out = {"ML72/AI-Image-Classifier-Playground", "Selvamaribose/CIFAKE-AI-Synthetic-Image-Classification", "cszn/FFDNet",
                "kennymckormick/DrawBench-Glance", "PicoTrex/Awesome-Nano-Banana-images", "jamez-bondos/awesome-gpt4o-images"}
    # wild.zip's perceptual hashes; 5 bands of the 64-bit hash: two hashes within distance 4 share one
    bands: dict[tuple[int, str], list[int]] = defaultdict(list)
    hashes: list[int] = []

    def add_hash(value: int) -> None:
        for band, key in enumerate(_bands(value)):
            bands[(band, key)].append(len(hashes))
        hashes.append(value)

    for value in load_wild_phash(work, Path(args.wild_zip)):
        add_hash(value)
    wild_count = len(hashes)
    seen_sha: set[str] = set()
    per_generator: Counter = Counter()
    final = []
    by_repo = defaultdict(list)
    for row in candidates:
        by_repo[row["source_repo"]].append(row)
    # Repositories in sorted order, each one's files in a seeded random order, until its cap (or
    # its generators' caps) is reached: the caps draw a seeded sample without decoding every file.
    for repo in sorted(by_repo):
        rows = sorted(by_repo[repo], key=lambda r: r["source_path"])
        random.Random(f"{SEED}:{repo}").shuffle(rows)
        if repo in held_out:
            removed["held-out repository"] += len(rows)
            continue
        if repo in EXCLUDED:
            removed[f"{repo}: {EXCLUDED[repo]}"] += len(rows)
            continue
        git_dir = snapshot_git_dir(Path(args.snapshots), repo)
        if git_dir is None:
            removed["no snapshot"] += len(rows)
            continue
        reader = BlobReader(git_dir)
        repo_cap = PER_REPO if rows[0]["label"] == "FAKE" else args.real_per_repo
        taken = 0
        for position, row in enumerate(rows):
            if taken >= repo_cap:
                removed[f"over the cap for one repository ({'FAKE' if row['label'] == 'FAKE' else 'REAL'} {repo_cap})"] += len(rows) - position
                break
            if (repo, row["source_path"]) in wild_pairs:
                removed["already in wild (same repository and path)"] += 1
                continue
            if per_generator[(row["label"], row["generator"])] >= PER_GENERATOR:
                removed[f"over {PER_GENERATOR} for one generator"] += 1
                continue
            info = cache.get(reader, row["commit"], row["source_path"])
            if info is None:
                removed["not in the snapshot at that commit"] += 1
                continue
            if info.get("error"):
                removed["unreadable image"] += 1
                continue
            if int(info.get("frames") or 1) > 1:
                removed["animated"] += 1
                continue
            if int(info["orig_width"]) * int(info["orig_height"]) > MAX_PIXELS:
                removed[f"over {MAX_PIXELS // 1_000_000} megapixels (a giant collage)"] += 1
                continue
            if min(int(info["orig_width"]), int(info["orig_height"])) < MIN_SHORT_SIDE:
                removed[f"short side < {MIN_SHORT_SIDE} px"] += 1
                continue
            if info["sha256"] in known_sha or info["copy_sha256"] in known_sha:
                removed["sha256 also in wild or cifake"] += 1
                continue
            if info["sha256"] in seen_sha:
                removed["sha256 duplicate within the set"] += 1
                continue
            seen_sha.add(info["sha256"])
            value = int(info["phash"], 16)
            candidates_near = {i for band, key in enumerate(_bands(value)) for i in bands.get((band, key), [])}
            hit = [i for i in candidates_near if bin(hashes[i] ^ value).count("1") <= 4]
            if any(i < wild_count for i in hit):
                removed["phash near-duplicate of a wild.zip image (distance <= 4)"] += 1
                continue
            if hit:
                removed["phash near-duplicate within the set (distance <= 4)"] += 1
                continue
            add_hash(value)
            final.append({**row, **info})
            per_generator[(row["label"], row["generator"])] += 1
            taken += 1
        reader.close()
        cache.save()
        print(f"{repo}: {taken} kept of {len(rows)}", file=sys.stderr)
    splits = choose_split(final, args)
    for row in final:
        row["split"] = splits[row["source_repo"]]
        generator = re.sub(r"[^a-z0-9.+-]+", "-", row["generator"].lower()).strip("-")
        row["file"] = f"{row['split']}/{row['label']}/og_{generator}_{row['sha256'][:12]}.jpg"
    final.sort(key=lambda r: (r["split"], r["label"], r["file"]))
    write_tsv(Path(args.manifest), MANIFEST_COLUMNS, final)
    write_tsv(work / "removed.tsv", ["rule", "count"], [{"rule": k, "count": v} for k, v in sorted(removed.items())])
    counts = Counter((r["split"], r["label"]) for r in final)
    print(f"manifest {args.manifest}: {len(final)} rows {dict(sorted(counts.items()))}")
    print("removed:", dict(sorted(removed.items())))


def _bands(value: int) -> list[str]:
    # 64 bits in 5 bands (13,13,13,13,12): hashes within Hamming distance 4 agree on at least one band
    widths = [13, 13, 13, 13, 12]
    out, shift = [], 0
    for width in widths:
        out.append(format((value >> shift) & ((1 << width) - 1), "x"))
        shift += width
    return out


def load_wild_phash(work: Path, wild_zip: Path) -> list[int]:
    path = work / "wild-phash.tsv"
    if not path.exists():
        rows = [{"name": name, "phash": str(value)} for name, value in wild_phashes(wild_zip)]
        write_tsv(path, ["name", "phash"], rows)
    return [int(row["phash"], 16) for row in read_tsv(path)]


def choose_split(rows: list[dict], args: argparse.Namespace) -> dict[str, str]:
    """Whole repositories to val: those listed in --val-repos, else train."""
    val = set(filter(None, (args.val_repos or "").split(",")))
    return {row["source_repo"]: ("val" if row["source_repo"] in val else "train") for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["scan", "merge"])
    parser.add_argument("--data", default="/work/data/open-generators")
    parser.add_argument("--snapshots", default="/work/.mirror")
    parser.add_argument("--only", help="scan: these repositories only (comma separated)")
    parser.add_argument("--manifest", default=str(HERE / "MANIFEST.tsv"))
    parser.add_argument("--wild-manifest", default="/work/shared/data/WILD-MANIFEST.tsv")
    parser.add_argument("--cifake-manifest", default="/work/shared/data/MANIFEST.tsv")
    parser.add_argument("--wild-zip", default="/work/shared/data/wild.zip")
    parser.add_argument("--real-per-repo", type=int, default=300, help="cap for one repository of real photos")
    parser.add_argument("--val-repos", default=(HERE / "val-repos.txt").read_text().replace("\n", ",") if (HERE / "val-repos.txt").exists() else "")
    args = parser.parse_args()
    {"scan": scan, "merge": merge}[args.command](args)


if __name__ == "__main__":
    main()
