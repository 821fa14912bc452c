"""Ground truth for a scan (``--labels``): from folder names or from a ``path,label`` CSV.

* ``folders``: the nearest enclosing folder named REAL or FAKE (any case) gives the label; the
  folders inside the root are looked at first, then the root's own name (so scanning
  ``sample/REAL`` directly also works).
* a CSV file: rows ``path,label`` (a header row ``path,label`` is optional). ``path`` is matched
  against the path relative to its root, then against the absolute path. Labels are read as
  real (real, 0, human, authentic) or ai-generated (fake, ai, ai-generated, generated,
  synthetic, 1). An unknown label is a usage error naming the line, since a typo would
  otherwise silently drop ground truth.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from audit.errors import UsageError
from audit.intake import FileRecord
from audit.verdicts import VERDICT_AI, VERDICT_REAL

FOLDERS_MODE = "folders"
FOLDER_LABELS = {"real": VERDICT_REAL, "fake": VERDICT_AI}
LABEL_SYNONYMS = {
    **{word: VERDICT_REAL for word in ("real", "0", "human", "authentic")},
    **{word: VERDICT_AI for word in ("fake", "1", "ai", "ai-generated", "generated", "synthetic")},
}


class LabelsError(UsageError):
    """The --labels value cannot be used (unreadable CSV, unknown label)."""


def label_from_folders(record: FileRecord) -> str:
    folders = list(PurePath(record.rel_path).parts[:-1])
    # Only the root's own name, not its ancestors: /home/real/photos is not ground truth.
    root_name = PurePath(os.path.abspath(record.root)).name
    for part in reversed([root_name, *folders]):
        label = FOLDER_LABELS.get(part.lower())
        if label:
            return label
    return ""


def parse_label(text: str) -> str | None:
    return LABEL_SYNONYMS.get(text.strip().lower())


@dataclass
class CsvLabels:
    by_path: dict[str, str] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, path: Path) -> "CsvLabels":
        labels = cls()
        try:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                for line_no, row in enumerate(csv.reader(handle), start=1):
                    if not row or all(not cell.strip() for cell in row):
                        continue
                    if len(row) < 2:
                        raise LabelsError(f"{path}:{line_no}: expected 'path,label', got {row!r}")
                    name, text = row[0], row[1]
                    if line_no == 1 and (name.strip().lower(), text.strip().lower()) == ("path", "label"):
                        continue
                    label = parse_label(text)
                    if label is None:
                        known = ", ".join(sorted(LABEL_SYNONYMS))
                        raise LabelsError(f"{path}:{line_no}: unknown label {text!r} (known: {known})")
                    labels.by_path[name] = label
        except OSError as exc:
            raise LabelsError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise LabelsError(f"cannot read labels file {path}: {exc}") from None
        return labels

    def label_for(self, record: FileRecord) -> str:
        for key in (record.rel_path, record.abs_path):
            if key in self.by_path:
                self.used.add(key)
                return self.by_path[key]
        return ""

    @property
    def unmatched(self) -> int:
        return len(self.by_path) - len(self.used)


class Labeller:
    """Gives each record its true label ('' when unknown) according to --labels."""

    def __init__(self, spec: str | None) -> None:
        self.spec = spec
        self.csv: CsvLabels | None = None
        if spec and spec != FOLDERS_MODE:
            self.csv = CsvLabels.read(Path(spec))

    def label_for(self, record: FileRecord) -> str:
        if not self.spec:
            return ""
        if self.csv is None:
            return label_from_folders(record)
        return self.csv.label_for(record)

    @property
    def unmatched(self) -> int | None:
        return self.csv.unmatched if self.csv is not None else None
