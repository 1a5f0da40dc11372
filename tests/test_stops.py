"""Stops that a user or the network makes, rather than a crash: Ctrl-C during a search (resumable,
and a resume that refuses a changed store or restarts a damaged trial), and a tracking server that
is stopped mid-search and started again (nothing lost).

Like the crash tests in test_faults.py, each stop lands at a named fault point (``asc.faults``) that
the code under test signals; unlike them, these run without the CPU-burning processes beside them:
what they check does not depend on timing, and the suite's time stays within its budget.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from asc.train import code_version

from tests.helpers import (ENV, REPO, armed, assert_same_rows, check_records, check_study, ctrl_c_as_in_a_terminal,
                           finish, free_port, kill_group, label_ids, mlflow_runs, mlflow_server, reference_reports,
                           release, run, search_cmd, tune_epochs, wait_fault, wait_for, wait_http)


def test_ctrl_c_stops_a_search_resumably_and_resume_refuses_a_changed_store_or_restarts_a_damaged_trial(store,
                                                                                                     tmp_path):
    """Ctrl-C: Tune saves its state and returns; the search must not close the study as if it were
    over, but say which command continues it. Before that command runs, the search's store goes away
    (resume refuses, in one line) and comes back, and the unfinished trial's checkpoint is truncated
    (the trial says so and starts again from its first epoch, to the same result)."""
    storage, faults = tmp_path / "runs", tmp_path / "faults"
    shutil.copytree(store, tmp_path / "store")  # this test moves it
    point = "trial=t001/reported/epoch=1"
    cmd = search_cmd(tmp_path / "store", storage, "ctrlc", "--num-samples", "2", "--max-concurrent", "1",
                     sets=["epochs=3", "scheduler=none"])
    proc = subprocess.Popen(cmd, cwd=REPO, env=armed(faults, point), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=ctrl_c_as_in_a_terminal)
    try:
        wait_fault(faults, point, proc)
        proc.send_signal(signal.SIGINT)  # the driver only, as Ray's workers ignore a terminal's Ctrl-C
        # the trial goes on only once Tune has taken the signal (its handler logs, into the search's
        # ray.log, as it sets the flag its loop stops on): released before, a trial on a fast machine
        # beside a slow driver could finish before the stop
        log = storage / "ctrlc" / "ray.log"
        wait_for(lambda: log.is_file() and "Stop signal received" in log.read_text(errors="replace"), 600,
                 "Tune's stop line in ray.log", proc)
        release(faults, point)
        out, err = finish(proc, 300)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert proc.returncode == 2, err[-3000:]
    assert f"python -m search resume ctrlc --storage {storage}" in err.strip().splitlines()[-1]
    _, _, parent, trials = mlflow_runs(f"sqlite:///{storage / 'mlflow.db'}", "ctrlc")
    assert all(r.info.status != "RUNNING" for r in parent + trials)

    (folder,) = [p for p in (tmp_path / "store").iterdir() if p.name.startswith("logmel")]
    folder.rename(folder.with_name("elsewhere"))
    gone = run([sys.executable, "-m", "search", "resume", "ctrlc", "--storage", str(storage)], timeout=120)
    assert gone.returncode == 2 and len(gone.stderr.strip().splitlines()) == 1, gone.stderr
    assert f"{folder}: the feature store this search's trials read is gone" in gone.stderr
    folder.with_name("elsewhere").rename(folder)
    # other training code than it ran with (an upgrade between the stop and the resume): refused
    info_file = storage / "ctrlc" / "search.json"
    kept = info_file.read_text()
    info_file.write_text(json.dumps({**json.loads(kept), "asc_code": "0123456789ab"}))
    other = run([sys.executable, "-m", "search", "resume", "ctrlc", "--storage", str(storage)], timeout=120)
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1, other.stderr
    assert (f"{info_file}: the search ran with other training code (asc source 0123456789ab then, "
            f"{code_version()} now); resuming would mix") in other.stderr and "--warm-start ctrlc" in other.stderr
    info_file.write_text(kept)

    t001 = label_ids(storage, "ctrlc")["t001"]
    checkpoints = list((storage / "ctrlc").glob(f"t001_{t001}/checkpoint_*/last.pt"))
    assert checkpoints
    for last in checkpoints:  # as a disk that filled up mid-copy would leave it
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    done = run([sys.executable, "-m", "search", "resume", "ctrlc", "--storage", str(storage)], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the trial starts again from its first epoch" in done.stdout
    named = next(line for line in done.stdout.splitlines() if line.startswith("t001: its checkpoint "))
    assert any(named.startswith(f"t001: its checkpoint {last}: ") for last in checkpoints), named  # where it is kept
    records = check_records(f"sqlite:///{storage / 'mlflow.db'}", storage, "ctrlc", 2)
    check_study(storage, "ctrlc", records["results"])
    assert_same_rows(records["results"][t001], reference_reports(storage, "ctrlc", t001), "t001")



# The driver gives up on an unanswered write after these waits and keeps it (half a minute by default,
# and MLflow's own retries of each try): what is tested is what it does after, so it gives up at once.
QUICK_RETRIES = {**ENV, "ASC_MLFLOW_RETRY_DELAYS": "0.2", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


@contextlib.contextmanager
def server_away(store, tmp_path, name: str, down: str, up: str, sets: list[str]):
    """A two-trial search against a real `mlflow server` that is stopped when the search reaches the
    fault point ``down`` and started again (on the same port and store) when it reaches ``up``.
    Yields (tracking URI, the search's stderr) once the search has ended with exit status 0."""
    port, faults = free_port(), tmp_path / "faults"
    uri = f"http://127.0.0.1:{port}"
    server = mlflow_server(tmp_path, port)
    search = None
    try:
        wait_http(f"{uri}/health", 300)
        search = subprocess.Popen(
            search_cmd(store, tmp_path / "runs", name, "--num-samples", "2", "--max-concurrent", "1",
                       "--mlflow-uri", uri, sets=sets),
            cwd=REPO, env=armed(faults, down, up, base=QUICK_RETRIES), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        wait_fault(faults, down, search)
        kill_group(server)
        release(faults, down)
        wait_fault(faults, up, search)  # the driver has gone on while no server answered
        server = mlflow_server(tmp_path, port)
        wait_http(f"{uri}/health", 300)
        release(faults, up)
        out, err = search.communicate(timeout=600)
        assert search.returncode == 0, err[-3000:]
        yield uri, err
    finally:
        if search is not None and search.poll() is None:
            kill_group(search)
        kill_group(server)


def test_a_tracking_server_stopped_mid_search_loses_nothing(store, tmp_path):
    """The server is stopped after a trial's first epoch (so, while it trains its second) and started
    again after its second: every epoch of every trial is in MLflow exactly once, and every run is
    closed."""
    with server_away(store, tmp_path, "blink", "trial=t001/reported/epoch=1", "trial=t001/reported/epoch=2",
                     ["epochs=3", "scheduler=none"]) as (uri, err):
        assert "does not answer" in err and "answers again" in err
        records = check_records(uri, tmp_path / "runs", "blink", 2)  # every epoch once, every run FINISHED
        check_study(tmp_path / "runs", "blink", records["results"])
        assert not (tmp_path / "runs" / "blink" / "mlflow_pending.pkl").exists()


def test_a_tracking_server_down_when_a_trial_starts_loses_none_of_its_epochs(store, tmp_path):
    """The server goes away as the first trial ends (before the driver opens the second trial's run)
    and comes back after the second trial's first epoch: the second trial's run, created late, holds
    every epoch once; the first trial's model, which could not be logged, is said so on its run
    (`artifact_error`) and in the search's last lines, every run is closed, and `resume` logs the
    model from the trial's checkpoint."""
    with server_away(store, tmp_path, "late", "trial=t001/end", "trial=t002/reported/epoch=1",
                     ["epochs=2", "scheduler=none"]) as (uri, err):
        client, _, _, trials = mlflow_runs(uri, "late")
        by_label = {r.data.tags["mlflow.runName"].split()[0]: r for r in trials}
        assert sorted(by_label) == ["t001", "t002"] and all(r.info.status == "FINISHED" for r in trials)
        history = client.get_metric_history(by_label["t002"].info.run_id, "objective")
        assert sorted(m.step for m in history) == [1, 2], history  # epoch 1 reported while no run existed
        assert "artifact_error" in by_label["t001"].data.tags and "model_uri" in by_label["t002"].data.tags
        assert "1 trial(s) have no model in MLflow (t001" in err and "python -m search resume late" in err
        done = run([sys.executable, "-m", "search", "resume", "late", "--storage", str(tmp_path / "runs")],
                   timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "t001: its model and artifacts are logged to MLflow now" in done.stdout
        assert "have no model in MLflow" not in done.stderr
        t001 = client.get_run(by_label["t001"].info.run_id)
        assert "artifact_error" not in t001.data.tags and "model_uri" in t001.data.tags
        assert {a.path for a in client.list_artifacts(t001.info.run_id)} >= {"predictions.parquet"}


def test_a_driver_killed_while_the_tracking_server_is_away_loses_no_epoch_once_resumed(store, tmp_path):
    """The server stops after the first trial's first epoch, the driver keeps that trial's epochs for
    it and is killed holding them; the server comes back and `resume` finishes the search: every epoch
    of every trial is in MLflow exactly once, those the dead driver held taken from Tune's records."""
    storage, faults, port = tmp_path / "runs", tmp_path / "faults", free_port()
    uri, down, held = f"http://127.0.0.1:{port}", "trial=t001/reported/epoch=1", "trial=t001/reported/epoch=2"
    server, search, paused = mlflow_server(tmp_path, port), None, {}
    try:
        wait_http(f"{uri}/health", 300)
        search = subprocess.Popen(
            search_cmd(store, storage, "held", "--num-samples", "2", "--max-concurrent", "1", "--mlflow-uri", uri,
                       sets=["epochs=3", "scheduler=none"]),
            cwd=REPO, env=armed(faults, down, held, base=QUICK_RETRIES), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        wait_fault(faults, down, search)
        kill_group(server)
        release(faults, down)
        paused = wait_fault(faults, held, search)
        # the driver has processed the second epoch (Tune saved it), so it holds it for the server
        t001 = lambda: label_ids(storage, "held").get("t001")  # noqa: E731
        wait_for(lambda: t001() and tune_epochs(storage / "held").get(t001()) == 2, 600,
                  "Tune's saved state to hold the first trial's epoch 2", search)
    finally:
        if search is not None:
            kill_group(search)
        with contextlib.suppress(ProcessLookupError, KeyError):
            os.kill(paused["pid"], signal.SIGKILL)  # it dies with its raylet anyway
        kill_group(server)
    server = mlflow_server(tmp_path, port)
    try:
        wait_http(f"{uri}/health", 300)
        done = run([sys.executable, "-m", "search", "resume", "held", "--storage", str(storage)], timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        records = check_records(uri, storage, "held", 2)  # every epoch once, every run FINISHED
        check_study(storage, "held", records["results"])
    finally:
        kill_group(server)


def test_resume_names_a_trial_whose_artifacts_still_cannot_be_logged_and_keeps_its_record(tmp_path, capsys):
    """What `resume` does with the record of a trial whose model never reached MLflow when its
    checkpoint is gone, or when the record itself is unreadable: a warning line naming the trial or
    the file, and the record kept for a later resume."""
    from search.tracking import UNLOGGED_FILE, send_unlogged, unlogged_trials

    gone = tmp_path / "search" / "t001_abc"
    gone.mkdir(parents=True)
    (gone / UNLOGGED_FILE).write_text(json.dumps({"run_id": "0" * 32, "label": "t001", "checkpoint": "checkpoint_000002",
                                                 "error": "ConnectionError: refused"}))
    broken = tmp_path / "search" / "t002_def"
    broken.mkdir()
    (broken / UNLOGGED_FILE).write_text('{"run_id": ')
    partial = tmp_path / "search" / "t003_ghi"
    partial.mkdir()
    (partial / UNLOGGED_FILE).write_text('{"run_id": "x"}')
    assert send_unlogged(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "search") == ["t001"]
    err = capsys.readouterr().err
    assert "t001: its artifacts still cannot be logged to MLflow (FileNotFoundError: " in err
    assert f"{broken / UNLOGGED_FILE}: unreadable" in err
    assert f"{partial / UNLOGGED_FILE}: unreadable (not a record of run_id, label and checkpoint)" in err
    assert [record["label"] for _, record in unlogged_trials(tmp_path / "search")] == ["t001"]
    assert all((d / UNLOGGED_FILE).is_file() for d in (gone, broken, partial))


def test_resume_refuses_a_store_that_is_damaged_or_holds_another_store(store, tmp_path):
    """What `resume` checks before Ray starts (a store that is gone: the Ctrl-C test above): a shard
    cut short, and a folder that now holds another store (other audio or settings), each one line
    naming the folder and what differs."""
    from asc.errors import AscError
    from search.stores import check_stores_unchanged, store_identity

    folder = next(p for p in store.iterdir() if p.name.startswith("logmel"))
    copy = tmp_path / "store" / folder.name
    shutil.copytree(folder, copy)
    info = {"stores": {"key": str(copy)}, "store_names": {"key": store_identity(str(copy))}}
    check_stores_unchanged(info, tmp_path / "search.json")  # as it was: resumes
    other = {**info, "store_names": {"key": "logmel32-0123456789ab"}}
    with pytest.raises(AscError, match=rf"{copy}: the feature store this search's trials read holds store "
                                       rf"{info['store_names']['key']}, not logmel32-0123456789ab; resuming"):
        check_stores_unchanged(other, tmp_path / "search.json")
    shard = sorted(copy.glob("*.arrow"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(AscError, match=rf"{copy}: the feature store this search's trials read is damaged "
                                       rf"\({shard.name} .*\); resuming"):
        check_stores_unchanged(info, tmp_path / "search.json")
