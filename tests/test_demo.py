"""The main job, ``python -m search demo``, end to end in a reduced form (a tiny synthetic set, two
short trials): dataset, feature stores, a search on local Ray into MLflow, fusion by Metric B
registered in the model registry, a submission file for the evaluation split; a rerun reuses it all."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ENV, REPO


def test_demo_runs_the_whole_loop_and_a_rerun_reuses_its_work(tmp_path):
    cmd = [sys.executable, "-m", "search", "demo", "--workdir", str(tmp_path), "--segments-per-scene", "6",
           "--parallel-per-scene", "2", "--seconds", "1", "--num-samples", "2", "--epochs", "2",
           "--set", "batch_size=8", "--set", "width=8", "--set", "enhancement=mean_subtraction"]
    first = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    assert all(f"[{k}/5]" in out for k in range(1, 6))
    assert "parallel groups" in out and " built" in out
    assert "best 2 of 2 trials by metric_b" in out and "bootstrap fusion by metric_b" in out
    assert "models:/asc-demo-fusion/1" in out and "mlflow ui --backend-store-uri" in out
    summary = out[out.index("=" * 100):]
    assert "selection clips (%)" in summary and "\nfusion " in summary
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    evaluate = (tmp_path / "data" / "evaluation_setup" / "fold1_evaluate.csv").read_text().splitlines()[1:]
    assert lines[0] == "Id,Scene_label" and len(lines) - 1 == len([e for e in evaluate if e.strip()])

    # a fusion the user runs by hand on the demo's search is not the demo's: the rerun keeps its own
    store = out.split("mlflow ui --backend-store-uri ")[1].split()[0]
    by_hand = subprocess.run([sys.executable, "-m", "search", "fuse", "--experiment", "demo", "--mlflow-uri", store,
                              "--method", "top", "--size", "2"], cwd=REPO, env=ENV, capture_output=True, text=True,
                             timeout=600)
    assert by_hand.returncode == 0, by_hand.stderr[-3000:]

    second = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    again = second.stdout
    assert "exists: reusing it" in again and "nothing to do" in again
    assert "has finished: reusing its trials" in again and "reusing it and its model" in again
    assert "submission.csv exists and the fusion is the same: reusing it" in again
    assert again[again.index("=" * 100):again.index("files (all under")] == summary[:summary.index("files (all under")]

    # other options would show the old results as theirs: one line, naming them, before any work
    other = [a if a != "2" or cmd[k - 1] != "--epochs" else "3" for k, a in enumerate(cmd)] + ["--fusion-size", "4"]
    third = subprocess.run(other, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert third.returncode == 2 and third.stderr.splitlines() == [
        f"error: {tmp_path}: its demo was made with --fusion-size 6, epochs=2, scheduler.max_t=2, not "
        "--fusion-size 4, epochs=3, scheduler.max_t=3; delete the folder or give another --workdir"], third.stderr
    assert "[1/5]" not in third.stdout
    # the same options written another way are the same demo
    same = [a if a != "--epochs" else "--set" for a in cmd]
    same[same.index("--set") + 1] = "epochs=2"
    fourth = subprocess.run(same, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert fourth.returncode == 0 and "has finished: reusing its trials" in fourth.stdout, fourth.stderr[-2000:]
    # the runs are in the demo's own MLflow store: another tracking URI would not find them
    fifth = subprocess.run(cmd + ["--mlflow-uri", f"sqlite:///{tmp_path / 'other.db'}"], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert fifth.returncode == 2 and fifth.stderr.splitlines() == [
        f"error: {tmp_path}: its demo was made with --mlflow-uri WORKDIR/runs/mlflow.db, not --mlflow-uri "
        f"sqlite:///{tmp_path / 'other.db'}; delete the folder or give another --workdir"], fifth.stderr
    assert not (tmp_path / "other.db").exists()


def test_a_workdir_from_before_the_tracking_option_is_held_to_the_store_its_search_used(tmp_path):
    """demo.json written before --mlflow-uri was recorded: the store is the one the search itself
    recorded (a tracking server given by MLFLOW_TRACKING_URI then), not assumed to be the workdir's."""
    import json

    import pytest

    from asc.errors import AscError
    from search.demo import OWN_STORE, SEARCH_NAME, _same_options
    from search.tuner import SEARCH_FILE

    made = {"--seed": 1, "epochs": 2}
    (tmp_path / "demo.json").write_text(json.dumps(made))
    (tmp_path / "runs" / SEARCH_NAME).mkdir(parents=True)
    (tmp_path / "runs" / SEARCH_NAME / SEARCH_FILE).write_text(json.dumps({"mlflow_uri": "http://127.0.0.1:5000"}))
    _same_options(tmp_path, {**made, "--mlflow-uri": "http://127.0.0.1:5000"})  # the same store: fine
    with pytest.raises(AscError, match="made with --mlflow-uri http://127.0.0.1:5000, not --mlflow-uri " + OWN_STORE):
        _same_options(tmp_path, {**made, "--mlflow-uri": OWN_STORE})
    (tmp_path / "runs" / SEARCH_NAME / SEARCH_FILE).unlink()  # no search yet: any store
    _same_options(tmp_path, {**made, "--mlflow-uri": OWN_STORE})
