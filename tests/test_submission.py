"""Submission files in both formats, written whole and overwritten, never appended."""

from __future__ import annotations

import os
import stat

import pytest

from asc import AscError
from asc.submission import write_submission

FILES = ["audio/0.wav", "audio/1.wav", "audio/10.wav"]
LABELS = ["bus", "park", "tram"]


def test_kaggle_format_uses_the_file_stem_as_id(tmp_path):
    out = write_submission(FILES, LABELS, tmp_path / "sub.csv", "kaggle")
    assert out.read_text() == "Id,Scene_label\n0,bus\n1,park\n10,tram\n"


def test_dcase_format_is_tab_separated_file_names_without_a_header(tmp_path):
    out = write_submission(FILES, LABELS, tmp_path / "sub.txt", "dcase")
    assert out.read_text().splitlines() == ["audio/0.wav\tbus", "audio/1.wav\tpark", "audio/10.wav\ttram"]


def test_the_dcase_file_reads_back_with_the_challenges_own_tools(tmp_path):
    """dcase_util, the DCASE community's library: its default loader, and the 2019 baseline's way."""
    import dcase_util

    out = write_submission(FILES, LABELS, tmp_path / "sub.txt", "dcase")
    for kwargs in ({}, {"fields": ["filename", "scene_label"], "csv_header": False, "delimiter": "\t"}):
        items = dcase_util.containers.MetaDataContainer().load(str(out), **kwargs)
        assert [(item.filename, item.scene_label) for item in items] == list(zip(FILES, LABELS)), kwargs


def test_a_rerun_overwrites_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "sub.csv"
    write_submission(FILES, LABELS, path)
    write_submission(FILES[:1], ["metro"], path)
    assert path.read_text() == "Id,Scene_label\n0,metro\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


def test_the_file_gets_the_umasks_mode_and_an_existing_file_keeps_its_own(tmp_path):
    umask = os.umask(0o027)
    try:
        write_submission(FILES, LABELS, tmp_path / "new.csv")
        assert stat.S_IMODE((tmp_path / "new.csv").stat().st_mode) == 0o640  # as open() gives it, not 0600
        (tmp_path / "new.csv").chmod(0o604)
        write_submission(FILES, LABELS, tmp_path / "new.csv")
        assert stat.S_IMODE((tmp_path / "new.csv").stat().st_mode) == 0o604
    finally:
        os.umask(umask)


@pytest.mark.parametrize("files, labels, fmt, culprit", [
    (FILES, LABELS, "csv", "format"),
    (FILES, LABELS[:2], "kaggle", "labels"),
    (["audio/0.wav", "other/0.wav"], ["bus", "park"], "kaggle", "stem"),
])
def test_bad_input_is_one_error_and_writes_nothing(tmp_path, files, labels, fmt, culprit):
    with pytest.raises(AscError, match=culprit):
        write_submission(files, labels, tmp_path / "sub.csv", fmt)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(AscError, match="no such folder"):
        write_submission(FILES, LABELS, tmp_path / "missing" / "sub.csv")
