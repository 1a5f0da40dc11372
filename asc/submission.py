"""Submission files: a scene label per clip, as the Kaggle leaderboard and the DCASE evaluation take them.

- ``kaggle``: ``Id,Scene_label`` with the file stem as the Id (``audio/0.wav`` -> ``0``);
- ``dcase``: ``filename<TAB>scene_label`` lines with the file name as the set writes it (``audio/0.wav``),
  and no header line: the DCASE 2016-2019 Task 1 system output is read headerless (the 2019 baseline
  with ``csv_header=False``, ``dcase_util``'s default loader refuses a header row).

A file is written beside its destination and renamed into place: a rerun overwrites it whole, and an
interrupted write leaves the previous file (or nothing), never half of one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from asc.errors import AscError, write_atomic

FORMATS = ("kaggle", "dcase")


def submission_text(filenames: Sequence[str], labels: Sequence[str], fmt: str = "kaggle") -> str:
    if fmt not in FORMATS:
        raise AscError(f"submission format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if len(filenames) != len(labels):
        raise AscError(f"submission: {len(filenames)} files but {len(labels)} labels")
    if fmt == "kaggle":
        ids = [Path(f).stem for f in filenames]
        if len(set(ids)) != len(ids):
            raise AscError("submission: two files share a stem, which Kaggle's Id cannot tell apart")
        return "Id,Scene_label\n" + "".join(f"{i},{label}\n" for i, label in zip(ids, labels))
    return "".join(f"{f}\t{label}\n" for f, label in zip(filenames, labels))


def write_submission(filenames: Sequence[str], labels: Sequence[str], path: str | Path, fmt: str = "kaggle") -> Path:
    """Write the submission to ``path`` atomically (aside, then renamed over it)."""
    text = submission_text(filenames, labels, fmt)
    path = Path(path)
    if path.is_dir():
        raise AscError(f"{path}: is a folder; give the submission file's path")
    if not path.parent.is_dir():
        raise AscError(f"{path.parent}: no such folder for the submission file")
    return write_atomic(path, text)
