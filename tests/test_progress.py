"""Long work's progress in a log (stderr not a terminal, as under pytest): plain lines on stdout, the
last at the end, nothing on stderr; nothing at all for work shorter than the interval."""

from __future__ import annotations

from asc.progress import progress


def test_progress_in_a_log_is_lines_on_stdout_and_nothing_for_short_work(capsys):
    with progress(3, "predict", "clip", every=0.0) as bar:  # every update is past the interval
        for _ in range(3):
            bar.update()
    out, err = capsys.readouterr()
    assert out.splitlines()[-1].startswith("predict: 3/3 clips, ") and len(out.splitlines()) == 4 and err == ""
    with progress(3, "predict", "clip") as bar:  # half a minute between lines: short work says nothing
        bar.update(3)
    with progress(3, "predict", "clip", show=False) as bar:
        bar.update(3)
    assert capsys.readouterr() == ("", "")
