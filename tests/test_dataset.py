"""The DCASE2019 Task 1B reader (asc.dataset) and ``python -m asc describe`` on hand-written folders.

The fixture is written by hand in the real layout (tab-separated CSVs as they ship, tiny real WAVs),
so these tests pin the reader to the format rather than to asc.synth's output.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile

from asc import AscError, REFERENCE_DEVICE
from asc.dataset import Clip, Dataset, read_dataset, read_development, read_unlabeled
from asc.describe import summarize

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------
# The development fixture, as the files look on disk.
# meta.csv line numbers (the header is line 1) are noted where tests refer to them.

META_CSV = (
    "filename\tscene_label\tidentifier\tsource_label\n"
    "audio/airport-barcelona-0-0-a.wav\tairport\tbarcelona-0\ta\n"  # 2  train, group with b, c
    "audio/airport-barcelona-0-0-b.wav\tairport\tbarcelona-0\tb\n"  # 3
    "audio/airport-barcelona-0-0-c.wav\tairport\tbarcelona-0\tc\n"  # 4
    "audio/airport-barcelona-0-1-a.wav\tairport\tbarcelona-0\ta\n"  # 5  train, A only
    "audio/airport-helsinki-1-5-a.wav\tairport\thelsinki-1\ta\n"  # 6  evaluate, group with b
    "audio/airport-helsinki-1-5-b.wav\tairport\thelsinki-1\tb\n"  # 7
    "audio/metro_station-barcelona-2-10-a.wav\tmetro_station\tbarcelona-2\ta\n"  # 8  train, group with c
    "audio/metro_station-barcelona-2-10-c.wav\tmetro_station\tbarcelona-2\tc\n"  # 9
    "audio/metro_station-helsinki-0-3-a.wav\tmetro_station\thelsinki-0\ta\n"  # 10 evaluate, A only
    "audio/street_traffic-helsinki-3-7-a.wav\tstreet_traffic\thelsinki-3\ta\n"  # 11 train, group with b, c
    "audio/street_traffic-helsinki-3-7-b.wav\tstreet_traffic\thelsinki-3\tb\n"  # 12
    "audio/street_traffic-helsinki-3-7-c.wav\tstreet_traffic\thelsinki-3\tc\n"  # 13
    "audio/street_traffic-barcelona-4-2-a.wav\tstreet_traffic\tbarcelona-4\ta\n"  # 14 evaluate, A only
    "audio/street_traffic-barcelona-4-3-b.wav\tstreet_traffic\tbarcelona-4\tb\n"  # 15 evaluate, B without A
    "audio/metro_station-helsinki-5-0-a.wav\tmetro_station\thelsinki-5\ta\n"  # 16 unused, group with b
    "audio/metro_station-helsinki-5-0-b.wav\tmetro_station\thelsinki-5\tb\n"  # 17 unused
)

# Listed in a different order from meta.csv: the dataset keeps meta.csv's order.
FOLD1_TRAIN_CSV = (
    "filename\tscene_label\n"
    "audio/airport-barcelona-0-0-a.wav\tairport\n"  # 2
    "audio/airport-barcelona-0-1-a.wav\tairport\n"  # 3
    "audio/metro_station-barcelona-2-10-a.wav\tmetro_station\n"  # 4
    "audio/street_traffic-helsinki-3-7-a.wav\tstreet_traffic\n"  # 5
    "audio/airport-barcelona-0-0-b.wav\tairport\n"  # 6
    "audio/street_traffic-helsinki-3-7-b.wav\tstreet_traffic\n"  # 7
    "audio/airport-barcelona-0-0-c.wav\tairport\n"  # 8
    "audio/metro_station-barcelona-2-10-c.wav\tmetro_station\n"  # 9
    "audio/street_traffic-helsinki-3-7-c.wav\tstreet_traffic\n"  # 10
)

FOLD1_EVALUATE_CSV = (
    "filename\tscene_label\n"
    "audio/airport-helsinki-1-5-a.wav\tairport\n"  # 2
    "audio/metro_station-helsinki-0-3-a.wav\tmetro_station\n"  # 3
    "audio/street_traffic-barcelona-4-2-a.wav\tstreet_traffic\n"  # 4
    "audio/airport-helsinki-1-5-b.wav\tairport\n"  # 5
    "audio/street_traffic-barcelona-4-3-b.wav\tstreet_traffic\n"  # 6
)

FOLD1_TEST_CSV = (
    "filename\n"
    "audio/airport-helsinki-1-5-a.wav\n"
    "audio/metro_station-helsinki-0-3-a.wav\n"
    "audio/street_traffic-barcelona-4-2-a.wav\n"
    "audio/airport-helsinki-1-5-b.wav\n"
    "audio/street_traffic-barcelona-4-3-b.wav\n"
)

# (filename, scene, city, location, segment, device, split) of every clip, in meta.csv order.
EXPECTED_CLIPS = [
    ("audio/airport-barcelona-0-0-a.wav", "airport", "barcelona", "0", "0", "a", "train"),
    ("audio/airport-barcelona-0-0-b.wav", "airport", "barcelona", "0", "0", "b", "train"),
    ("audio/airport-barcelona-0-0-c.wav", "airport", "barcelona", "0", "0", "c", "train"),
    ("audio/airport-barcelona-0-1-a.wav", "airport", "barcelona", "0", "1", "a", "train"),
    ("audio/airport-helsinki-1-5-a.wav", "airport", "helsinki", "1", "5", "a", "evaluate"),
    ("audio/airport-helsinki-1-5-b.wav", "airport", "helsinki", "1", "5", "b", "evaluate"),
    ("audio/metro_station-barcelona-2-10-a.wav", "metro_station", "barcelona", "2", "10", "a", "train"),
    ("audio/metro_station-barcelona-2-10-c.wav", "metro_station", "barcelona", "2", "10", "c", "train"),
    ("audio/metro_station-helsinki-0-3-a.wav", "metro_station", "helsinki", "0", "3", "a", "evaluate"),
    ("audio/street_traffic-helsinki-3-7-a.wav", "street_traffic", "helsinki", "3", "7", "a", "train"),
    ("audio/street_traffic-helsinki-3-7-b.wav", "street_traffic", "helsinki", "3", "7", "b", "train"),
    ("audio/street_traffic-helsinki-3-7-c.wav", "street_traffic", "helsinki", "3", "7", "c", "train"),
    ("audio/street_traffic-barcelona-4-2-a.wav", "street_traffic", "barcelona", "4", "2", "a", "evaluate"),
    ("audio/street_traffic-barcelona-4-3-b.wav", "street_traffic", "barcelona", "4", "3", "b", "evaluate"),
    ("audio/metro_station-helsinki-5-0-a.wav", "metro_station", "helsinki", "5", "0", "a", "unused"),
    ("audio/metro_station-helsinki-5-0-b.wav", "metro_station", "helsinki", "5", "0", "b", "unused"),
]

EXPECTED_SPLITS = {
    "train": {"a": 4, "b": 2, "c": 3},
    "evaluate": {"a": 3, "b": 2},
    "unused": {"a": 1, "b": 1},
}
EXPECTED_SCENES = {"airport": 6, "metro_station": 5, "street_traffic": 5}
# group key -> {device: split}
EXPECTED_GROUPS = {
    "airport-barcelona-0-0": {"a": "train", "b": "train", "c": "train"},
    "airport-helsinki-1-5": {"a": "evaluate", "b": "evaluate"},
    "metro_station-barcelona-2-10": {"a": "train", "c": "train"},
    "street_traffic-helsinki-3-7": {"a": "train", "b": "train", "c": "train"},
    "metro_station-helsinki-5-0": {"a": "unused", "b": "unused"},
}

# Device C clips are written at 16 kHz / 16 bit, the rest at 8 kHz / 24 bit, so the tallies differ.
SECONDS = 0.1


def _format(filename: str) -> tuple[int, str]:
    return (16000, "PCM_16") if filename.endswith("-c.wav") else (8000, "PCM_24")


def write_wav(path: Path, sample_rate: int = 8000, subtype: str = "PCM_24", frames: int | None = None) -> None:
    frames = int(round(SECONDS * sample_rate)) if frames is None else frames
    signal = 0.1 * np.sin(2 * np.pi * 440 * np.arange(frames) / sample_rate)
    soundfile.write(str(path), signal.astype(np.float32), sample_rate, subtype=subtype)


@pytest.fixture
def dev_dir(tmp_path: Path) -> Path:
    """A small TAU Urban Acoustic Scenes 2019 Mobile development folder."""
    root = tmp_path / "TAU-urban-acoustic-scenes-2019-mobile-development"
    (root / "audio").mkdir(parents=True)
    (root / "evaluation_setup").mkdir()
    (root / "meta.csv").write_text(META_CSV)
    (root / "evaluation_setup" / "fold1_train.csv").write_text(FOLD1_TRAIN_CSV)
    (root / "evaluation_setup" / "fold1_evaluate.csv").write_text(FOLD1_EVALUATE_CSV)
    (root / "evaluation_setup" / "fold1_test.csv").write_text(FOLD1_TEST_CSV)
    for filename, *_ in EXPECTED_CLIPS:
        write_wav(root / filename, *_format(filename))
    return root


UNLABELED_NAMES = ["0", "1", "10", "2"]


@pytest.fixture
def unlabeled_dir(tmp_path: Path) -> Path:
    """A leaderboard-style folder: audio/0.wav ... with no labels."""
    root = tmp_path / "TAU-urban-acoustic-scenes-2019-mobile-leaderboard"
    (root / "audio").mkdir(parents=True)
    for name in UNLABELED_NAMES:
        write_wav(root / "audio" / f"{name}.wav")
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asc", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


# --------------------------------------------------------------------------------------------------
# Reading a development folder


def test_read_development_clips(dev_dir):
    dataset = read_development(dev_dir)
    assert dataset.labeled is True
    assert dataset.fold == 1
    assert dataset.root == dev_dir
    assert len(dataset) == len(EXPECTED_CLIPS) == 16
    got = [(c.filename, c.scene, c.city, c.location, c.segment, c.device, c.split) for c in dataset.clips]
    assert got == EXPECTED_CLIPS
    for clip, (filename, scene, city, location, segment, device, _) in zip(dataset.clips, EXPECTED_CLIPS):
        assert clip.identifier == f"{city}-{location}"
        assert clip.group == f"{scene}-{city}-{location}-{segment}"
        assert clip.stem == Path(filename).stem
        assert dataset[filename] is clip
        assert dataset.path(clip) == dev_dir / filename
        assert dataset.path(filename) == dev_dir / filename


def test_identifier_matches_meta_csv(dev_dir):
    dataset = read_development(dev_dir)
    rows = [line.split("\t") for line in META_CSV.splitlines()[1:]]
    assert [(c.filename, c.scene, c.identifier, c.device) for c in dataset.clips] == [tuple(r) for r in rows]


def test_read_dataset_detects_development(dev_dir):
    assert read_dataset(dev_dir).clips == read_development(dev_dir).clips
    assert read_dataset(str(dev_dir)).labeled is True


def test_devices_scenes_and_splits(dev_dir):
    dataset = read_dataset(dev_dir)
    assert dataset.devices == ["a", "b", "c"]
    assert dataset.devices[0] == REFERENCE_DEVICE
    assert dataset.scenes == ["airport", "metro_station", "street_traffic"]
    for split, per_device in EXPECTED_SPLITS.items():
        clips = dataset.split(split)
        assert len(clips) == sum(per_device.values())
        assert {d: sum(c.device == d for c in clips) for d in per_device} == per_device
        assert all(c.split == split for c in clips)
    assert dataset.split("test") == []
    assert sum(len(dataset.split(s)) for s in ("train", "evaluate", "unused")) == len(dataset)


def test_devices_put_the_reference_first():
    clips = tuple(
        Clip(filename=f"audio/park-paris-0-0-{d}.wav", split="train", scene="park", city="paris",
             location="0", segment="0", device=d)
        for d in ("c", "B", "a", "s1")
    )
    # Plain sorting would give B, a, c, s1.
    assert Dataset(root=Path("."), clips=clips, labeled=True).devices == ["a", "B", "c", "s1"]


def test_parallel_groups(dev_dir):
    dataset = read_dataset(dev_dir)
    groups = dataset.parallel_groups()
    assert {key: {d: c.split for d, c in members.items()} for key, members in groups.items()} == EXPECTED_GROUPS
    for key, members in groups.items():
        for device, clip in members.items():
            assert clip.group == key and clip.device == device
            assert clip is dataset[clip.filename]
    # A B clip without its A clip is not a group.
    assert "street_traffic-barcelona-4-3" not in groups

    def keys(split):
        return sorted(dataset.parallel_groups(split))

    assert keys("train") == ["airport-barcelona-0-0", "metro_station-barcelona-2-10", "street_traffic-helsinki-3-7"]
    assert keys("evaluate") == ["airport-helsinki-1-5"]
    assert keys("unused") == ["metro_station-helsinki-5-0"]
    assert keys("test") == []


def test_fold_test_csv_is_optional(dev_dir):
    (dev_dir / "evaluation_setup" / "fold1_test.csv").unlink()
    assert [c.split for c in read_dataset(dev_dir).clips] == [row[-1] for row in EXPECTED_CLIPS]


def test_blank_lines_and_crlf_are_accepted(dev_dir):
    meta = dev_dir / "meta.csv"
    meta.write_bytes((META_CSV + "\n").replace("\n", "\r\n").encode())
    train = dev_dir / "evaluation_setup" / "fold1_train.csv"
    train.write_text(FOLD1_TRAIN_CSV.replace("\n", "\n\n", 1) + "\n")
    dataset = read_dataset(dev_dir)
    assert [(c.filename, c.split) for c in dataset.clips] == [(r[0], r[-1]) for r in EXPECTED_CLIPS]


def test_other_fold(dev_dir):
    setup = dev_dir / "evaluation_setup"
    # fold 2: swap the roles of train and evaluate.
    (setup / "fold2_train.csv").write_text(FOLD1_EVALUATE_CSV)
    (setup / "fold2_evaluate.csv").write_text(FOLD1_TRAIN_CSV)
    dataset = read_dataset(dev_dir, fold=2)
    assert dataset.fold == 2
    swap = {"train": "evaluate", "evaluate": "train", "unused": "unused"}
    assert [c.split for c in dataset.clips] == [swap[r[-1]] for r in EXPECTED_CLIPS]
    with pytest.raises(AscError, match="fold3_train.csv"):
        read_dataset(dev_dir, fold=3)


# --------------------------------------------------------------------------------------------------
# describe


def test_summarize_library(dev_dir):
    summary = summarize(read_dataset(dev_dir), progress=False)
    assert summary["kind"] == "development"
    assert summary["clips"] == 16
    assert summary["devices"] == ["a", "b", "c"]
    assert summary["splits"] == EXPECTED_SPLITS
    assert summary["scenes"] == EXPECTED_SCENES
    assert summary["parallel_groups"] == 5
    assert summary["parallel_groups_by_split"] == {"train": 3, "evaluate": 1}
    assert summary["audio"]["sample_rates"] == {"8000": 13, "16000": 3}
    assert summary["audio"]["bit_depths"] == {"24": 13, "16": 3}
    assert "audio" not in summarize(read_dataset(dev_dir), check_audio=False)


def test_describe_json(dev_dir):
    result = run_cli("describe", str(dev_dir), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["root"] == str(dev_dir)
    assert summary["kind"] == "development"
    assert summary["fold"] == 1
    assert summary["clips"] == 16
    assert summary["devices"] == ["a", "b", "c"]
    assert summary["splits"] == EXPECTED_SPLITS
    assert list(summary["splits"]) == ["train", "evaluate", "unused"]
    assert all(list(counts)[0] == "a" for counts in summary["splits"].values())
    assert summary["scenes"] == EXPECTED_SCENES
    assert summary["parallel_groups"] == 5
    assert summary["parallel_groups_by_split"] == {"train": 3, "evaluate": 1}
    assert summary["audio"] == {
        "sample_rates": {"16000": 3, "8000": 13},
        "channels": {"1": 16},
        "seconds": {"0.1": 16},
        "bit_depths": {"16": 3, "24": 13},
        "subtypes": {"PCM_16": 3, "PCM_24": 13},
    }


def test_describe_text(dev_dir):
    result = run_cli("describe", str(dev_dir))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()}
    assert rows["split"] == ["a", "b", "c", "total"]
    assert rows["train"] == ["4", "2", "3", "9"]
    assert rows["evaluate"] == ["3", "2", "0", "5"]
    assert rows["unused"] == ["1", "1", "0", "2"]
    assert rows["airport"] == ["6"]
    assert rows["metro_station"] == ["5"]
    assert rows["street_traffic"] == ["5"]
    assert "16 clips" in result.stdout
    assert "parallel groups (reference device + another): 5 (train 3, evaluate 1)" in result.stdout
    assert "8000 x13" in result.stdout and "16000 x3" in result.stdout


# --------------------------------------------------------------------------------------------------
# Bad input: one AscError naming the file (and line); exit code 2 with one "error:" line from the CLI.


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def _append(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def _setup(root: Path, split: str) -> Path:
    return root / "evaluation_setup" / f"fold1_{split}.csv"


def _missing_meta(root):
    (root / "meta.csv").unlink()


def _missing_train(root):
    _setup(root, "train").unlink()


def _missing_evaluate(root):
    _setup(root, "evaluate").unlink()


def _audio_absent(root):
    (root / "audio/street_traffic-barcelona-4-2-a.wav").unlink()


def _fold_unknown_clip(root):
    _append(_setup(root, "train"), "audio/airport-barcelona-9-9-a.wav\tairport")  # line 11


def _fold_label_disagrees(root):
    _edit(_setup(root, "evaluate"), "audio/metro_station-helsinki-0-3-a.wav\tmetro_station",
          "audio/metro_station-helsinki-0-3-a.wav\tairport")  # line 3


def _meta_duplicate(root):
    _append(root / "meta.csv", "audio/airport-barcelona-0-1-a.wav\tairport\tbarcelona-0\ta")  # line 18


def _fold_duplicate(root):
    _append(_setup(root, "evaluate"), "audio/airport-helsinki-1-5-a.wav\tairport")  # line 7


def _test_fold_duplicate(root):
    _append(_setup(root, "test"), "audio/airport-helsinki-1-5-b.wav")  # line 7


def _meta_malformed(root):
    _edit(root / "meta.csv", "audio/airport-helsinki-1-5-b.wav\tairport\thelsinki-1\tb",
          "audio/airport-helsinki-1-5-b.wav\tairport\thelsinki-1")  # line 7: 3 fields


def _meta_space_separated(root):
    _edit(root / "meta.csv", "audio/airport-helsinki-1-5-b.wav\tairport\thelsinki-1\tb",
          "audio/airport-helsinki-1-5-b.wav airport helsinki-1 b")  # line 7: 1 field


def _fold_malformed(root):
    _edit(_setup(root, "train"), "audio/airport-barcelona-0-1-a.wav\tairport\n",
          "audio/airport-barcelona-0-1-a.wav\tairport\textra\n")  # line 3: 3 fields


def _meta_wrong_header(root):
    _edit(root / "meta.csv", "filename\tscene_label", "file\tscene_label")


def _meta_misspelled_scene_label(root):
    _edit(root / "meta.csv", "filename\tscene_label\t", "filename\tscene\t")


def _fold_wrong_header(root):
    _edit(_setup(root, "evaluate"), "filename\tscene_label\n", "filename,scene_label\n")


def _test_fold_wrong_header(root):
    _edit(_setup(root, "test"), "filename\n", "file\n")


def _bad_file_name(root):
    write_wav(root / "audio/airport-barcelona-0-9.wav")
    _append(root / "meta.csv", "audio/airport-barcelona-0-9.wav\tairport\tbarcelona-0\ta")  # line 18


def _bad_file_folder(root):
    write_wav(root / "airport-barcelona-0-9-a.wav")
    _append(root / "meta.csv", "airport-barcelona-0-9-a.wav\tairport\tbarcelona-0\ta")  # line 18


def _meta_identifier_disagrees(root):
    _edit(root / "meta.csv", "audio/metro_station-helsinki-0-3-a.wav\tmetro_station\thelsinki-0\ta",
          "audio/metro_station-helsinki-0-3-a.wav\tmetro_station\thelsinki-9\ta")  # line 10


def _meta_scene_disagrees(root):
    _edit(root / "meta.csv", "audio/metro_station-helsinki-0-3-a.wav\tmetro_station\t",
          "audio/metro_station-helsinki-0-3-a.wav\tairport\t")  # line 10


def _in_train_and_evaluate(root):
    _append(_setup(root, "evaluate"), "audio/airport-barcelona-0-1-a.wav\tairport")  # line 7


def _test_fold_unknown_clip(root):
    _append(_setup(root, "test"), "audio/airport-barcelona-9-9-a.wav")  # line 7


def _text_as_wav(root):
    (root / "audio/airport-barcelona-0-1-a.wav").write_text("this is not audio\n")


def _meta_huge_field(root):
    _append(root / "meta.csv", "x" * 200_000 + "\tairport\tbarcelona-0\ta")  # line 18: over csv's field limit


def _empty_wav(root):
    write_wav(root / "audio/airport-barcelona-0-1-a.wav", frames=0)


def _header_only(path: Path) -> None:
    path.write_text(path.read_text().splitlines()[0] + "\n")


def _meta_header_only(root):
    _header_only(root / "meta.csv")
    for split in ("train", "evaluate", "test"):  # the fold files would name clips meta.csv lacks first
        _header_only(_setup(root, split))


def _train_header_only(root):
    _header_only(_setup(root, "train"))


def _evaluate_header_only(root):
    _header_only(_setup(root, "evaluate"))


def _no_audio_folder(root):
    for path in (root / "audio").iterdir():
        path.unlink()
    (root / "audio").rmdir()


@dataclass(frozen=True)
class Bad:
    id: str
    make: Callable[[Path], None] | None  # edits the fixture; None: DATA_DIR does not exist
    culprit: str  # the file at fault, relative to the dataset folder
    line: int | None = None  # its line, where one applies
    also: tuple[str, ...] = ()  # more "file[:line]" the message names (relative)
    audio: bool = False  # found by describe's audio check, not by the reader
    cli: bool = False  # also run through ``python -m asc describe``
    bug: str | None = None  # a known library bug: the case is expected to fail


BAD = [
    Bad("missing-meta", _missing_meta, "meta.csv"),
    Bad("missing-fold-train", _missing_train, "evaluation_setup/fold1_train.csv"),
    Bad("missing-fold-evaluate", _missing_evaluate, "evaluation_setup/fold1_evaluate.csv"),
    Bad("missing-audio-folder", _no_audio_folder, "audio"),
    Bad("audio-absent", _audio_absent, "audio/street_traffic-barcelona-4-2-a.wav", also=("meta.csv:14",)),
    Bad("fold-clip-not-in-meta", _fold_unknown_clip, "evaluation_setup/fold1_train.csv", 11),
    Bad("test-fold-clip-not-in-meta", _test_fold_unknown_clip, "evaluation_setup/fold1_test.csv", 7),
    Bad("fold-label-disagrees", _fold_label_disagrees, "evaluation_setup/fold1_evaluate.csv", 3),
    Bad("meta-scene-disagrees-with-name", _meta_scene_disagrees, "meta.csv", 10),
    Bad("meta-identifier-disagrees-with-name", _meta_identifier_disagrees, "meta.csv", 10),
    Bad("meta-duplicate", _meta_duplicate, "meta.csv", 18),
    Bad("fold-duplicate", _fold_duplicate, "evaluation_setup/fold1_evaluate.csv", 7),
    Bad("test-fold-duplicate", _test_fold_duplicate, "evaluation_setup/fold1_test.csv", 7),
    Bad("meta-malformed-line", _meta_malformed, "meta.csv", 7, cli=True),
    Bad("meta-huge-field", _meta_huge_field, "meta.csv", 18, cli=True),
    Bad("meta-space-separated-line", _meta_space_separated, "meta.csv", 7),
    Bad("fold-malformed-line", _fold_malformed, "evaluation_setup/fold1_train.csv", 3),
    Bad("meta-wrong-header", _meta_wrong_header, "meta.csv", 1),
    Bad("meta-misspelled-scene-label", _meta_misspelled_scene_label, "meta.csv", 1),
    Bad("fold-wrong-header", _fold_wrong_header, "evaluation_setup/fold1_evaluate.csv", 1),
    Bad("test-fold-wrong-header", _test_fold_wrong_header, "evaluation_setup/fold1_test.csv", 1),
    Bad("file-name-pattern", _bad_file_name, "meta.csv", 18),
    Bad("file-not-in-audio-folder", _bad_file_folder, "meta.csv", 18),
    Bad("in-train-and-evaluate", _in_train_and_evaluate, "evaluation_setup/fold1_evaluate.csv", 7),
    Bad("text-as-wav", _text_as_wav, "audio/airport-barcelona-0-1-a.wav", audio=True, cli=True),
    Bad("empty-wav", _empty_wav, "audio/airport-barcelona-0-1-a.wav", audio=True),
    Bad("no-such-data-dir", None, "no-such-folder", cli=True),
    Bad("meta-header-only", _meta_header_only, "meta.csv", cli=True),
    Bad("fold-train-header-only", _train_header_only, "evaluation_setup/fold1_train.csv", cli=True),
    Bad("fold-evaluate-header-only", _evaluate_header_only, "evaluation_setup/fold1_evaluate.csv"),
]


def _params(cases):
    return [
        pytest.param(case, id=case.id,
                     marks=[pytest.mark.xfail(reason=case.bug, strict=True)] if case.bug else [])
        for case in cases
    ]


def _prepare(case: Bad, root: Path) -> Path:
    if case.make is None:
        return root / case.culprit
    case.make(root)
    return root


def _expected_names(case: Bad, root: Path) -> list[str]:
    culprit = str(root / case.culprit) + ("" if case.line is None else f":{case.line}")
    also = []
    for name in case.also:
        rel, _, line = name.partition(":")
        also.append(str(root / rel) + (f":{line}" if line else ""))
    return [culprit, *also]


@pytest.mark.parametrize("case", _params(BAD))
def test_bad_input_raises(case, dev_dir):
    data_dir = _prepare(case, dev_dir)
    if case.audio:
        dataset = read_dataset(data_dir)  # the reader only checks that the file exists
        summarize(dataset, check_audio=False)
        with pytest.raises(AscError) as info:
            summarize(dataset, progress=False)
    else:
        with pytest.raises(AscError) as info:
            read_dataset(data_dir)
    message = str(info.value)
    assert "\n" not in message
    for name in _expected_names(case, dev_dir):
        assert name in message, f"{name!r} not in {message!r}"
    if case.line is None:  # no line number is made up for a whole-file problem
        assert not re.search(re.escape(str(dev_dir / case.culprit)) + r":\d", message), message


@pytest.mark.parametrize("case", _params([c for c in BAD if c.cli]))
def test_bad_input_cli(case, dev_dir):
    data_dir = _prepare(case, dev_dir)
    result = run_cli("describe", str(data_dir), "--json")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for name in _expected_names(case, dev_dir):
        assert name in lines[0]


def test_device_names_are_case_insensitive(dev_dir):
    """A set written with capital device letters (names and source_label) reads as the usual one."""
    expected = read_development(dev_dir).clips
    capital = {"-a.wav": "-A.wav", "-b.wav": "-B.wav", "-c.wav": "-c.wav"}  # c stays lower: mixed case too
    for path in (dev_dir / "audio").iterdir():
        for old, new in capital.items():
            if path.name.endswith(old):
                path.rename(path.with_name(path.name[:-len(old)] + new))
    for table in [dev_dir / "meta.csv", *(dev_dir / "evaluation_setup").glob("*.csv")]:
        text = table.read_text()
        for old, new in capital.items():
            text = text.replace(old, new)
        table.write_text(text.replace("\ta\n", "\tA\n"))
    dataset = read_development(dev_dir)
    assert [(c.device, c.split, c.scene, c.group) for c in dataset.clips] == \
        [(c.device, c.split, c.scene, c.group) for c in expected]
    assert dataset.devices == ["a", "b", "c"] and dataset.clips[0].filename.endswith("-A.wav")
    assert len(dataset.parallel_groups()) == len(read_development(dev_dir).parallel_groups())


def test_misspelled_header_is_not_read_silently(dev_dir):
    """Whatever read_dataset decides, a development meta.csv with a bad header must not be read as-is."""
    _meta_misspelled_scene_label(dev_dir)
    with pytest.raises(AscError, match="meta.csv:1"):
        read_development(dev_dir)


# --------------------------------------------------------------------------------------------------
# Unlabeled sets (leaderboard / evaluation): audio/0.wav ... without labels


@pytest.mark.parametrize(
    "listing", ["meta.csv", "evaluation_setup/fold1_test.csv", "evaluation_setup/test.csv"]
)
def test_unlabeled_listed(unlabeled_dir, listing):
    path = unlabeled_dir / listing
    path.parent.mkdir(exist_ok=True)
    path.write_text("filename\naudio/0.wav\naudio/1.wav\naudio/10.wav\naudio/2.wav\n")
    dataset = read_dataset(unlabeled_dir)
    assert dataset.labeled is False
    assert dataset.fold is None
    assert [c.filename for c in dataset.clips] == [f"audio/{n}.wav" for n in UNLABELED_NAMES]
    assert [c.stem for c in dataset.clips] == UNLABELED_NAMES
    assert all(c.split == "test" for c in dataset.clips)
    assert all(c.scene is c.device is c.city is c.identifier is c.group is None for c in dataset.clips)
    assert dataset.devices == [] and dataset.scenes == []
    assert read_unlabeled(unlabeled_dir).clips == dataset.clips


def test_unlabeled_meta_with_extra_columns(unlabeled_dir):
    (unlabeled_dir / "meta.csv").write_text("filename\tscene_label\naudio/2.wav\tpark\naudio/0.wav\tbus\n")
    dataset = read_unlabeled(unlabeled_dir)
    assert [c.filename for c in dataset.clips] == ["audio/2.wav", "audio/0.wav"]


def test_unlabeled_from_audio_folder(unlabeled_dir):
    dataset = read_dataset(unlabeled_dir)
    assert dataset.labeled is False
    assert [c.filename for c in dataset.clips] == ["audio/0.wav", "audio/1.wav", "audio/2.wav", "audio/10.wav"]
    assert all(c.split == "test" for c in dataset.clips)


def test_unlabeled_missing_file(unlabeled_dir):
    (unlabeled_dir / "meta.csv").write_text("filename\naudio/0.wav\naudio/3.wav\n")
    with pytest.raises(AscError) as info:
        read_dataset(unlabeled_dir)
    assert str(unlabeled_dir / "audio/3.wav") in str(info.value)
    assert f"{unlabeled_dir / 'meta.csv'}:3" in str(info.value)


def test_unlabeled_duplicate(unlabeled_dir):
    (unlabeled_dir / "meta.csv").write_text("filename\naudio/0.wav\naudio/1.wav\naudio/0.wav\n")
    with pytest.raises(AscError, match="meta.csv:4"):
        read_dataset(unlabeled_dir)


def test_unlabeled_listing_without_filename_column(unlabeled_dir):
    (unlabeled_dir / "meta.csv").write_text("file\naudio/0.wav\n")
    with pytest.raises(AscError, match=re.escape(f"{unlabeled_dir / 'meta.csv'}:1")):
        read_dataset(unlabeled_dir)


def test_unlabeled_empty_audio_folder(tmp_path):
    (tmp_path / "audio").mkdir()
    with pytest.raises(AscError, match=re.escape(str(tmp_path))):
        read_dataset(tmp_path)


def test_describe_unlabeled_json(unlabeled_dir):
    result = run_cli("describe", str(unlabeled_dir), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["kind"] == "unlabeled"
    assert summary["fold"] is None
    assert summary["clips"] == 4
    assert summary["devices"] == []
    assert summary["splits"] == {"test": {"?": 4}}
    assert summary["scenes"] == {}
    assert summary["parallel_groups"] == 0
    assert summary["audio"]["sample_rates"] == {"8000": 4}
    assert summary["audio"]["bit_depths"] == {"24": 4}
    assert summary["audio"]["seconds"] == {"0.1": 4}
