"""Long work's progress in a log (stderr not a terminal, as under pytest): plain lines on stderr, the
last at the end, nothing on stdout; nothing at all for work shorter than the interval."""

from __future__ import annotations

from asc.progress import each, progress


def test_progress_in_a_log_is_lines_on_stderr_and_nothing_for_short_work(capsys):
    with progress(3, "predict", "clip", every=0.0) as bar:  # every update is past the interval
        for _ in range(3):
            bar.update()
    out, err = capsys.readouterr()
    assert err.splitlines()[-1].startswith("predict: 3/3 clips, ") and len(err.splitlines()) == 3 and out == ""
    with progress(3, "predict", "clip") as bar:  # half a minute between lines: short work says nothing
        bar.update(3)
    with progress(3, "predict", "clip", show=False) as bar:
        bar.update(3)
    assert capsys.readouterr() == ("", "")
    for k in each(range(2), "reading", "run", every=0.0):
        if k == 1:
            assert capsys.readouterr().err == "reading: 1/2 runs, 0 s\n"  # counted once its work was done
    assert capsys.readouterr().err == "reading: 2/2 runs, 0 s\n"  # the end, once
