"""The DCASE2019 Task 1B (TAU Urban Acoustic Scenes 2019 Mobile) folder layout.

A development folder holds::

    meta.csv                            filename  scene_label  identifier  source_label   (tab-separated)
    evaluation_setup/fold1_train.csv    filename  scene_label
    evaluation_setup/fold1_evaluate.csv filename  scene_label
    evaluation_setup/fold1_test.csv     filename                                       (optional)
    audio/[scene]-[city]-[location]-[segment]-[device].wav

A B or C segment was recorded in parallel with device A: its file name equals A's up to the device
letter, so ``scene-city-location-segment`` is the key of a *parallel group*. Unlabeled sets
(leaderboard, evaluation) hold ``audio/0.wav, audio/1.wav, ...`` listed in ``meta.csv`` or in an
``evaluation_setup/*test.csv`` file (or, failing both, found in ``audio/``).

Every problem a user's files can have raises :class:`asc.AscError` with one line naming the file and
line; nothing here writes anything.
"""

from __future__ import annotations

import collections
import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile

from asc.errors import AscError
from asc import REFERENCE_DEVICE

META_COLUMNS = ("filename", "scene_label", "identifier", "source_label")
LABELED_FOLD_COLUMNS = ("filename", "scene_label")
TEST_FOLD_COLUMNS = ("filename",)
TRAIN, EVALUATE, UNUSED, TEST = "train", "evaluate", "unused", "test"


@dataclass(frozen=True)
class Clip:
    """One audio file of a dataset, with what its name and the CSVs say about it.

    Unlabeled clips (leaderboard / evaluation sets) have only ``filename`` and ``split == "test"``.
    """

    filename: str  # relative to the dataset root, exactly as in meta.csv: "audio/....wav"
    split: str  # "train" / "evaluate" (fold files), "unused" (in meta.csv only) or "test" (unlabeled)
    scene: str | None = None
    city: str | None = None
    location: str | None = None
    segment: str | None = None
    device: str | None = None

    @property
    def identifier(self) -> str | None:
        """meta.csv's recording-location identifier, ``city-location``."""
        return None if self.city is None else f"{self.city}-{self.location}"

    @property
    def group(self) -> str | None:
        """Key shared by the parallel recordings of one segment (``scene-city-location-segment``)."""
        if self.device is None:
            return None
        return f"{self.scene}-{self.city}-{self.location}-{self.segment}"

    @property
    def stem(self) -> str:
        """File name without folder and extension: the Id of a submission row."""
        return Path(self.filename).stem


@dataclass(frozen=True)
class Dataset:
    """A dataset folder read and checked: its clips in meta.csv order."""

    root: Path
    clips: tuple[Clip, ...]
    labeled: bool  # a development set (labels, devices, folds) or an unlabeled test set
    fold: int | None = None
    _by_name: dict = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_name", {c.filename: c for c in self.clips})

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, filename: str) -> Clip:
        return self._by_name[filename]

    def path(self, clip: Clip | str) -> Path:
        """Absolute path of a clip's audio file."""
        return self.root / (clip.filename if isinstance(clip, Clip) else clip)

    def split(self, name: str) -> list[Clip]:
        return [c for c in self.clips if c.split == name]

    @property
    def devices(self) -> list[str]:
        """Devices found, reference device first, then alphabetical."""
        found = {c.device for c in self.clips if c.device is not None}
        return sorted(found, key=lambda d: (d != REFERENCE_DEVICE, d))

    @property
    def scenes(self) -> list[str]:
        return sorted({c.scene for c in self.clips if c.scene is not None})

    def parallel_groups(self, split: str | None = None) -> dict[str, dict[str, Clip]]:
        """Segments recorded by the reference device and at least one other device.

        Returns ``{group key: {device: clip}}``; with ``split`` only the groups whose reference clip
        is in that split (parallel recordings always share their location, hence their split).
        """
        groups: dict[str, dict[str, Clip]] = collections.defaultdict(dict)
        for clip in self.clips:
            if clip.group is not None:
                groups[clip.group][clip.device] = clip
        return {
            key: members
            for key, members in groups.items()
            if REFERENCE_DEVICE in members
            and len(members) > 1
            and (split is None or members[REFERENCE_DEVICE].split == split)
        }


def parse_filename(filename: str, where: str) -> dict[str, str]:
    """Split ``audio/[scene]-[city]-[location]-[segment]-[device].wav`` into its parts.

    The device is lower-cased, here and only here: file names are matched as they are, but ``-A.wav``
    and ``-a.wav`` are the same reference device everywhere downstream (metrics, correction, stores).
    ``where`` ("file:line") prefixes the error for a name that does not follow the pattern.
    """
    folder, _, name = filename.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    parts = stem.split("-")
    if folder != "audio" or not dot or ext.lower() != "wav" or len(parts) != 5 or not all(parts):
        raise AscError(
            f"{where}: file name {filename!r} does not match "
            "'audio/[scene]-[city]-[location]-[segment]-[device].wav'"
        )
    info = dict(zip(("scene", "city", "location", "segment", "device"), parts))
    info["device"] = info["device"].lower()
    return info


def read_table(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, fields)`` of a tab-separated DCASE CSV whose header is ``columns``.

    Blank lines are skipped; a wrong header or a row with the wrong number of fields is an error
    naming the file and line.
    """
    if not path.is_file():
        raise AscError(f"{path}: missing (expected a tab-separated file with columns {', '.join(columns)})")
    reader = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            lines = list(reader)
    except (OSError, UnicodeDecodeError) as exc:
        raise AscError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    except csv.Error as exc:  # e.g. a field over csv's size limit: not a DCASE table
        raise AscError(f"{path}:{reader.line_num if reader else 1}: malformed line ({exc})") from None
    if not lines or [h.strip() for h in lines[0]] != list(columns):
        found = "an empty file" if not lines else "\t".join(lines[0])
        raise AscError(f"{path}:1: expected header {chr(9).join(columns)!r} (tab-separated), found {found!r}")
    for number, fields in enumerate(lines[1:], start=2):
        fields = [f.strip() for f in fields]
        if not any(fields):
            continue
        if len(fields) != len(columns) or not all(fields):
            raise AscError(
                f"{path}:{number}: expected {len(columns)} tab-separated fields "
                f"({', '.join(columns)}), found {fields!r}"
            )
        yield number, fields


def _header(path: Path) -> tuple[str, ...]:
    """The column names of a tab-separated file's first line (stripped, without a UTF-8 BOM)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            return tuple(h.strip() for h in f.readline().rstrip("\r\n").split("\t"))
    except OSError as exc:
        raise AscError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _audio_files(root: Path) -> set[str]:
    """Names (``audio/x.wav``) of the files in ``root/audio``, listed once instead of stat-ing each."""
    folder = root / "audio"
    if not folder.is_dir():
        raise AscError(f"{folder}: missing audio folder")
    try:
        return {f"audio/{entry.name}" for entry in os.scandir(folder) if entry.is_file()}
    except OSError as exc:
        raise AscError(f"{folder}: cannot be listed ({exc.strerror or exc})") from None


def _check_unique(seen: dict[str, str], filename: str, where: str) -> None:
    if filename in seen:
        raise AscError(f"{where}: duplicate filename {filename!r} (first at line {seen[filename]})")
    seen[filename] = where.rpartition(":")[2]


def read_development(root: str | Path, fold: int = 1) -> Dataset:
    """Read and check a development folder (meta.csv, the fold's CSVs, audio/).

    Each clip's split is ``train`` or ``evaluate`` from the fold files, else ``unused``.
    """
    root = Path(root)
    meta_path = root / "meta.csv"
    present = _audio_files(root)
    setup = root / "evaluation_setup"

    parts: dict[str, dict[str, str]] = {}
    lines: dict[str, str] = {}
    for number, (filename, scene, identifier, source) in read_table(meta_path, META_COLUMNS):
        where = f"{meta_path}:{number}"
        _check_unique(lines, filename, where)
        info = parse_filename(filename, where)
        for what, value, expected in (
            ("scene_label", scene, info["scene"]),
            ("identifier", identifier, f"{info['city']}-{info['location']}"),
            ("source_label", source.lower(), info["device"]),
        ):
            if value != expected:
                raise AscError(f"{where}: {what} {value!r} disagrees with file name {filename!r} ({expected!r})")
        if filename not in present:
            raise AscError(f"{root / filename}: listed in {meta_path}:{number} but missing")
        parts[filename] = info
    if not parts:
        raise AscError(f"{meta_path}: lists no clips (a header only)")

    splits: dict[str, str] = {}
    for split in (TRAIN, EVALUATE):
        fold_path = setup / f"fold{fold}_{split}.csv"
        seen: dict[str, str] = {}
        for number, (filename, scene) in read_table(fold_path, LABELED_FOLD_COLUMNS):
            where = f"{fold_path}:{number}"
            _check_unique(seen, filename, where)
            if filename not in parts:
                raise AscError(f"{where}: {filename!r} is not in {meta_path}")
            if scene != parts[filename]["scene"]:
                raise AscError(
                    f"{where}: label {scene!r} for {filename!r} disagrees with {meta_path} "
                    f"({parts[filename]['scene']!r})"
                )
            if filename in splits:
                raise AscError(f"{where}: {filename!r} is in both the train and the evaluate fold")
            splits[filename] = split
        if not seen:
            raise AscError(f"{fold_path}: lists no clips (a header only); a development set needs train and evaluate clips")

    test_path = setup / f"fold{fold}_test.csv"
    if test_path.exists():  # the evaluate clips without labels; optional, but checked when present
        seen = {}
        for number, (filename,) in read_table(test_path, TEST_FOLD_COLUMNS):
            where = f"{test_path}:{number}"
            _check_unique(seen, filename, where)
            if filename not in parts:
                raise AscError(f"{where}: {filename!r} is not in {meta_path}")

    clips = tuple(Clip(filename=f, split=splits.get(f, UNUSED), **info) for f, info in parts.items())
    return Dataset(root=root, clips=clips, labeled=True, fold=fold)


def read_unlabeled(root: str | Path) -> Dataset:
    """Read a leaderboard / evaluation folder: ``audio/0.wav ...`` without labels or devices.

    The file list comes from ``meta.csv`` (a ``filename`` column), else from an
    ``evaluation_setup/*test.csv``, else from the ``audio`` folder itself (sorted by number).
    """
    root = Path(root)
    present = _audio_files(root)
    listings = [root / "meta.csv"] + sorted((root / "evaluation_setup").glob("*test.csv"))
    listing = next((p for p in listings if p.is_file()), None)
    if listing is None:
        names = sorted((n for n in present if n.lower().endswith(".wav")), key=_natural_key)
        if not names:
            raise AscError(f"{root}: no meta.csv, no evaluation_setup/*test.csv and no .wav files in audio/")
        return Dataset(root=root, clips=tuple(Clip(filename=n, split=TEST) for n in names), labeled=False)

    header = _header(listing)
    if "filename" not in header:
        raise AscError(f"{listing}:1: no 'filename' column in header {chr(9).join(header)!r}")
    column = header.index("filename")
    seen: dict[str, str] = {}
    # Extra columns (e.g. a scene_label of an evaluation meta.csv) are not needed: read filename only.
    for number, fields in read_table(listing, header):
        filename, where = fields[column], f"{listing}:{number}"
        _check_unique(seen, filename, where)
        if filename not in present:
            raise AscError(f"{root / filename}: listed in {where} but missing")
    if not seen:
        raise AscError(f"{listing}: lists no clips (a header only)")
    return Dataset(root=root, clips=tuple(Clip(filename=n, split=TEST) for n in seen), labeled=False)


def read_dataset(root: str | Path, fold: int = 1) -> Dataset:
    """Read a development folder, or an unlabeled one if that is what ``root`` holds.

    A folder is a development set when its meta.csv has a ``scene_label`` column or it has an
    ``evaluation_setup/fold*_train.csv``; the missing half of such a folder is an error, not a
    reason to read it as unlabeled.
    """
    root = Path(root)
    if root.is_file():
        raise AscError(f"{root}: a file; give a dataset folder (one that holds audio/, and meta.csv where labelled)")
    if not root.is_dir():
        raise AscError(f"{root}: no such dataset folder")
    meta = root / "meta.csv"
    development = any((root / "evaluation_setup").glob("fold*_train.csv"))
    if meta.is_file() and not development:
        development = "scene_label" in _header(meta)
    return read_development(root, fold) if development else read_unlabeled(root)


VALIDATION_SHARE = 0.2  # share of each scene's training locations the validation protocol holds out
VALIDATION_SEED = 0  # which ones (the same for every trial of a search)


def validation_locations(clips, share: float = VALIDATION_SHARE, seed: int = VALIDATION_SEED) -> set[tuple[str, str]]:
    """The (scene, identifier) pairs of the training split that the validation protocol holds out.

    Whole recording locations are held out (a location's clips share its acoustics, so holding out
    single clips would leak), the same share of each scene's locations so that every scene is
    validated, and never a scene's last one. Pairs, not identifiers: a location identifier that
    recurs under another scene is another place to hold out or keep.
    """
    by_scene: dict[str, set] = {}
    for clip in clips:
        if clip.split == TRAIN:
            by_scene.setdefault(clip.scene, set()).add(clip.identifier)
    rng = np.random.default_rng(seed)
    held: set[tuple[str, str]] = set()
    for scene in sorted(by_scene):
        locations = sorted(by_scene[scene])
        if len(locations) < 2:
            continue  # a scene's only location stays in training
        n_val = min(len(locations) - 1, max(1, round(len(locations) * share)))
        held.update((scene, location) for location in rng.choice(locations, size=n_val, replace=False).tolist())
    return held


@dataclass(frozen=True)
class AudioInfo:
    """What one audio file's header says."""

    sample_rate: int
    channels: int
    frames: int
    subtype: str  # libsndfile's name, e.g. PCM_24

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    @property
    def bit_depth(self) -> int | None:
        digits = "".join(ch for ch in self.subtype if ch.isdigit())
        return int(digits) if digits else None


def audio_info(path: Path) -> AudioInfo:
    """Read a file's audio header; an unreadable, non-audio or empty file is an AscError naming it."""
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        raise AscError(f"{path}: not a readable audio file ({str(exc).splitlines()[0]})") from None
    if info.frames <= 0:
        raise AscError(f"{path}: audio file holds no samples")
    return AudioInfo(info.samplerate, info.channels, info.frames, info.subtype)


def _natural_key(name: str):
    stem = Path(name).stem
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)
