"""The main job, ``python -m search demo``, end to end on a tiny synthetic set: dataset, description,
feature store (Ray), two of the paper's systems trained; a rerun reuses everything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end_and_a_rerun_reuses_its_work(tmp_path):
    cmd = [sys.executable, "-m", "search", "demo", "--workdir", str(tmp_path), "--segments-per-scene", "4",
           "--parallel-per-scene", "2", "--seconds", "1", "--epochs", "1"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "[1/3]" in out and "[2/3]" in out and "[3/3]" in out
    assert "parallel groups" in out and " built" in out
    table = out[out.index("system "):].splitlines()
    assert [line.split()[0] for line in table[2:]] == ["A2", "A6"]
    assert all(len(line.split()) == 1 + 5 + 1 + 5 for line in table[2:])  # ours | paper's
    assert len(list((tmp_path / "runs").glob("logmel128-*/A6/best.pt"))) == 1
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "reusing it" in second.stdout and "nothing to do" in second.stdout
    assert second.stdout[second.stdout.index("system "):] == out[out.index("system "):]  # resumed, not retrained
