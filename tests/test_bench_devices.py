"""The device-direction benchmark: its arithmetic on hand-made predictions, and the command end to end
on a tiny set (the claim itself is measured on the default set; see the README)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asc.metrics import mean_sem
from asc.systems import parallel_mask, prediction_metrics
from search.bench.devices import directions

REPO = Path(__file__).resolve().parents[1]


def test_parallel_mask_keeps_segments_recorded_by_several_devices():
    files = ["audio/bus-lyon-1-7-a.wav", "audio/bus-lyon-1-7-b.wav", "audio/bus-lyon-1-8-a.wav",
             "audio/park-oslo-2-9-a.wav", "audio/park-oslo-2-9-c.wav"]
    devices = ["a", "b", "a", "a", "c"]
    assert parallel_mask(files, devices).tolist() == [True, True, False, True, True]


def test_prediction_metrics_on_all_clips_and_on_parallel_segments():
    files = ["audio/s-c-1-1-a.wav", "audio/s-c-1-1-b.wav", "audio/s-c-1-2-a.wav", "audio/s-c-1-3-a.wav"]
    devices = np.array(["a", "b", "a", "a"])
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])  # right, wrong, right, wrong
    m = prediction_metrics(probs, labels, devices, files)
    assert m["all"]["acc_a"] == pytest.approx(2 / 3) and m["all"]["acc_b"] == 0.0
    assert m["all"]["device_gap"] == pytest.approx(2 / 3)
    assert m["parallel"]["acc_a"] == 1.0 and m["parallel"]["acc_b"] == 0.0  # the pair only
    assert m["parallel"]["device_gap"] == 1.0


def test_mean_and_standard_error_against_a_hand_computation():
    mean, sem = mean_sem([1.0, 2.0, 6.0])
    assert mean == 3.0
    assert sem == pytest.approx(math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2) / math.sqrt(3))
    assert math.isnan(mean_sem([4.0])[1])


def _run(acc_a, acc_bc, gap_parallel):
    part = {"acc_a": acc_a, "acc_bc": acc_bc, "device_gap": acc_a - acc_bc}
    return {"all": part, "parallel": {**part, "device_gap": gap_parallel}}


def test_directions_are_judged_on_seed_by_seed_differences():
    results = {
        "A2": [_run(0.90, 0.70, 0.20), _run(0.88, 0.72, 0.16)],
        "A3": [_run(0.82, 0.75, 0.05), _run(0.80, 0.77, 0.04)],
        "A6": [_run(0.81, 0.76, 0.04), _run(0.80, 0.76, 0.04)],
        "SC": [_run(0.90, 0.74, 0.15), _run(0.88, 0.71, 0.17)],
    }
    checks = {c["direction"]: c for c in directions(results)}
    gap = checks["A2 device gap, all clips (points)"]
    assert gap["mean"] == pytest.approx(18.0) and gap["met"]
    ratio = checks["A3 / A2 gap on parallel segments"]
    assert ratio["per_seed"] == pytest.approx([0.25, 0.25]) and ratio["met"]
    assert checks["A2 - A3 on device A (points)"]["mean"] == pytest.approx(8.0)
    a6 = checks["A6 - A3 on B&C (points)"]
    assert a6["per_seed"] == pytest.approx([1.0, -1.0]) and a6["mean"] == pytest.approx(0.0) and a6["met"]
    sc = checks["SC - A2 on B&C (points)"]
    assert sc["per_seed"] == pytest.approx([4.0, -1.0]) and sc["met"]
    results["A3"] = [_run(0.82, 0.75, 0.0), _run(0.80, 0.77, 0.0)]  # mean subtraction leaves no gap at all
    assert not {c["direction"]: c for c in directions(results)}["A3 / A2 gap on parallel segments"]["met"]


def test_bench_devices_end_to_end_on_a_tiny_set(tmp_path):
    out = tmp_path / "devices.json"
    cmd = [sys.executable, "-m", "search", "bench-devices", "--workdir", str(tmp_path / "work"), "--seeds", "2",
           "--epochs", "1", "--systems", "A2", "A3", "--segments-per-scene", "4", "--parallel-per-scene", "2",
           "--seconds", "1", "--json", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    assert "all evaluation clips:" in text and "parallel segments only:" in text
    assert "A3 / A2 gap on parallel segments" in text and "SC - A2" not in text
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"A2", "A3"} and all(len(runs) == 2 for runs in report["results"].values())
    assert report["synth_seconds"] > 0
    # A rerun reuses the set, the stores and the finished runs.
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reusing it" in again.stdout and "nothing to do" in again.stdout


def test_bench_devices_can_choose_each_runs_epoch_where_a_search_does(tmp_path):
    """--protocol validation: the epoch chosen on held-out training locations (no unseen device among
    them), the evaluation split, unseen devices included, scored once at that epoch."""
    out = tmp_path / "devices.json"
    cmd = [sys.executable, "-m", "search", "bench-devices", "--workdir", str(tmp_path / "work"), "--seeds", "2",
           "--epochs", "1", "--systems", "A2", "--segments-per-scene", "8", "--parallel-per-scene", "2",
           "--seconds", "1", "--protocol", "validation", "--json", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best epoch by Metric A on held-out training locations (seen devices)" in done.stdout
    report = json.loads(out.read_text())
    assert report["protocol"] == "validation"
    for run in report["results"]["A2"]:  # the evaluation split's figures: every device, the unseen ones too
        assert run["all"]["n_s1"] > 0 and run["all"]["n_s2"] > 0 and "acc_unseen" in run["all"]
    assert {p.name for p in (tmp_path / "work" / "runs").glob("*/*")} == {"A2-seed0-validation", "A2-seed1-validation"}


def test_dirs_feature_domain_error_is_small_beside_what_dir_changes(synth_set, fast_config):
    """--dir-error on the small set: the approximation's error per band, and the yardstick it is judged by."""
    from asc.dataset import read_development
    from search.bench.devices import dir_error

    err = dir_error(read_development(synth_set), 2, fast_config)
    assert err["clips"] == 2 and err["responses"] == 66 and len(err["per_band_mean_db"]) == fast_config.n_mels
    assert 0 <= err["bias_db"] <= err["mean_db"] <= err["p95_band_db"] <= err["worst_band_db"]
    assert err["mean_db"] < err["shaping_mean_db"] / 5, err
