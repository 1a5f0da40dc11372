"""What the tests of real searches share: running `python -m search` as a user does, reading back what
Tune, Optuna and MLflow recorded, waiting for an event a process signals, and the fault points'
markers (``asc.faults``) that let a test kill a process where it means to."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from asc.enhance import Enhancement
from asc.faults import DIR_ENV, POINTS_ENV, marker_path
from asc.models import ModelConfig
from asc.train import TrainConfig, train, train_seeds
from tests.conftest import predictions_artifact

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "spaces" / "smoke.yaml"
# The small set's feature settings (conftest's fast_config) and a batch its training split fills.
SHRINK = ["features.sample_rate=22050", "features.n_fft=1024", "features.hop_length=256", "features.fmax=11025",
          "n_mels=32", "batch_size=8", "width=8"]

ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(REPO),
       "RAY_worker_niceness": "0"}


def search_cmd(store: Path, storage: Path, name: str, *extra: str, sets: list[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "search", "run", str(SMOKE), "--store", str(store), "--storage", str(storage),
           "--name", name, *extra]
    for item in [*SHRINK, *sets]:
        cmd += ["--set", item]
    return cmd


def run(cmd, timeout=420, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=kw.pop("cwd", REPO), env=kw.pop("env", ENV), capture_output=True, text=True,
                          timeout=timeout, **kw)
    return done


def mlflow_runs(uri: str, name: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no experiment {name}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = [r for r in runs if r.data.tags.get("role") == "search"]
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    return client, experiment, parent, trials


def study(storage: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{storage / name / 'optuna.db'}")


def tune_results(storage: Path, name: str, raw: bool = False) -> dict[str, list[dict]]:
    """trial id -> the results Tune recorded for it, one per epoch. Tune appends to result.json: a
    trial stopped after reporting an epoch but before that epoch's checkpoint was saved resumes from
    the one before and reports the epoch again; the last report of an epoch is the one that counts
    here (MLflow keeps the first: an exact resume reports the same figures again). ``raw``: every row
    as written."""
    out = {}
    for f in (storage / name).glob("t*_*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows if raw else sorted({r["epoch"]: r for r in rows}.values(), key=lambda r: r["epoch"])
    return out


def check_records(uri: str, storage: Path, name: str, n_trials: int) -> dict:
    """What every search must leave: one finished MLflow run per trial, nested under the search's run,
    with its per-epoch metrics, predictions, confusion matrices and model; a study that agrees."""

    client, experiment, parent, trials = mlflow_runs(uri, name)
    # A trial a killed driver had started before Tune's experiment state recorded it is unknown to the
    # resumed search: its run is kept, tagged an orphan and KILLED, and its folder is not a trial's.
    orphans = client.search_runs([experiment.experiment_id], filter_string="tags.role = 'orphan'")
    assert all(r.info.status == "KILLED" and "driver died" in r.data.tags.get("note", "") for r in orphans)
    orphan_ids = {r.data.tags.get("tune_trial_id") for r in orphans}
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    parent_artifacts = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {"smoke.yaml", "command.txt", "best_trials.txt", "optuna_history.png"} <= parent_artifacts
    ids = [r.data.tags["tune_trial_id"] for r in trials]
    assert len(ids) == len(set(ids)) == n_trials, "exactly one run per trial"
    results = {k: v for k, v in tune_results(storage, name).items() if k not in orphan_ids}
    assert set(results) == set(ids)
    for r in trials:
        assert r.info.status == "FINISHED", (r.info.run_name, r.info.status)
        assert r.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert r.info.run_name.startswith("t0") and "mel" in r.info.run_name
        # where it came from, as mlflow.start_run records it: the source, and the code's commit in a clone
        assert r.data.tags["mlflow.source.name"].endswith("__main__.py")
        if (Path(__file__).parents[1] / ".git").exists():
            assert len(r.data.tags["mlflow.source.git.commit"]) == 40
        rows = results[r.data.tags["tune_trial_id"]]
        history = client.get_metric_history(r.info.run_id, "acc_a")
        assert [m.step for m in history] == [row["epoch"] for row in rows] == list(range(1, rows[-1]["epoch"] + 1))
        assert int(r.data.tags["epoch_reached"]) == rows[-1]["epoch"]
        for key in ("acc_b", "acc_c", "acc_bc", "device_gap", "metric_a", "metric_b", "loss", "objective",
                    "eval_metric_b"):
            assert key in r.data.metrics, key
        assert r.data.params["n_mels"] == "32" and "enhancement" in r.data.params
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"predictions.parquet", "confusion_selection.png", "confusion_evaluation.png"} <= artifacts
        table = predictions_artifact(client, r.info.run_id)
        assert {"split", "filename", "device", "label", "p_airport", "p_tram"} <= set(table.column_names)
        probs = np.stack([table.column(c).to_numpy() for c in table.column_names if c.startswith("p_")], axis=1)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
        assert set(table.column("split").to_pylist()) == {"selection", "evaluation"}
        # beside the kept epoch's selection figures, how many clips made them and their standard errors
        chose = [d for s, d in zip(table.column("split").to_pylist(), table.column("device").to_pylist())
                 if s == "selection"]
        assert {d: r.data.metrics.get(f"sel_n_{d}") for d in set(chose)} == {d: chose.count(d) for d in set(chose)}
        assert 0 < r.data.metrics["objective_cse"] < 0.5 and 0 < r.data.metrics["sel_metric_b_cse"] < 0.5
        models = client.search_logged_models([experiment.experiment_id], filter_string=f"source_run_id = '{r.info.run_id}'")
        assert len(models) == 1 and models[0].name == "model"
        # the model carries its own figures, those of the kept epoch(s) (MLflow's Models tab shows them)
        linked = {m.key: m for m in models[0].metrics or []}
        assert linked["sel_metric_b"].step == rows[-1]["epoch"]
        assert linked["sel_metric_b"].value == r.data.metrics["sel_metric_b"]
        assert linked["eval_metric_b"].value == r.data.metrics["eval_metric_b"]
    return {"client": client, "trials": trials, "results": results, "orphans": orphan_ids}


def check_study(storage: Path, name: str, results: dict[str, list[dict]]) -> None:
    """Optuna holds every trial with what really happened: COMPLETE at full budget, PRUNED (with its
    intermediate values up to the epoch it reached) when ASHA stopped it."""
    from optuna.trial import TrialState

    # (an orphan's study trial, asked for by a driver that died before Tune recorded it, ends FAIL)
    trials = [t for t in study(storage, name).get_trials()
              if t.user_attrs.get("tune_trial_id") in results or t.state != TrialState.FAIL]
    assert len(trials) == len(results)
    for t in trials:
        rows = results[t.user_attrs["tune_trial_id"]]
        reached, epochs = rows[-1]["epoch"], rows[-1]["epochs"]
        assert t.state == (TrialState.COMPLETE if reached == epochs else TrialState.PRUNED), (t.number, t.state)
        assert sorted(t.intermediate_values) == list(range(1, reached + 1))
        assert t.intermediate_values[reached] == pytest.approx(rows[-1]["objective"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, seconds: float) -> None:
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {seconds} s")


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def ray_nodes(address: str, env: dict) -> int:
    status = subprocess.run(["ray", "status", f"--address={address}"], env=env, capture_output=True, text=True,
                            timeout=60)
    active = status.stdout.split("Active:")[-1].split("Pending:")[0]
    return sum(" node_" in line for line in active.splitlines())


def wait_for(predicate, seconds: float, what: str, proc=None):
    """``predicate()`` once it is true; an AssertionError if ``proc`` (the process that should make it
    true) ends first, with its stderr where it was kept, or when ``seconds`` pass."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            said = proc.stderr.read()[-3000:] if proc.stderr else "(its stderr was not kept)"
            raise AssertionError(f"{' '.join(map(str, proc.args[:3]))} ... ended (status {proc.returncode}) "
                                 f"before {what}: {said}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


TIMING = ("seconds", "train_seconds", "data_wait_share", "train_clips_per_s", "epoch_seconds")


def armed(folder: Path, *patterns: str, base: dict = ENV) -> dict:
    """An environment in which the fault points ``patterns`` pause (markers into ``folder``), and a
    process sent SIGABRT prints every thread's Python stack (``finish``)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {**base, POINTS_ENV: ",".join(patterns), DIR_ENV: str(folder), "PYTHONFAULTHANDLER": "1"}


def ctrl_c_as_in_a_terminal() -> None:
    """``preexec_fn`` of a command a test stops with SIGINT: the default disposition, as a terminal's
    foreground job has it. A test runner started in the background of a script or under nohup ignores
    SIGINT, its children inherit that, and Python then never raises KeyboardInterrupt: the command
    would go on as if Ctrl-C had never been pressed, which is right for a background job and not
    what the test means."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """``proc.communicate(timeout=timeout)``; a process still running then has hung after its fault:
    it is sent SIGABRT, on which Python's faulthandler prints every thread's stack to its stderr, and
    the test fails with that stack, so that a hang says where it hangs. While a local Ray shuts down
    after Ctrl-C, ``search.prepare`` sends the command's stderr to an ``asc-*.err`` file in the Ray
    session's logs: the newest such file is shown too."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    os.kill(proc.pid, signal.SIGABRT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        _, err = proc.communicate()
    kill_group(proc)  # what is left of its process group
    logs = sorted(Path("/tmp/ray").glob("session_*/logs/asc-*.err"), key=lambda p: p.stat().st_mtime)[-1:]
    pytest.fail(f"{' '.join(map(str, proc.args[:4]))} ... still running {timeout} s after its fault; stderr:\n"
                f"{(err or '')[-6000:]}" + "".join(f"\n{log}:\n{log.read_text()[-6000:]}" for log in logs))


def wait_fault(folder: Path, pattern: str, proc=None, seconds: float = 600) -> dict:
    """The marker of ``pattern`` once a process paused there ({"pid", "point", ...})."""
    marker = marker_path(folder, pattern)
    wait_for(marker.is_file, seconds, f"fault point {pattern}", proc)
    return json.loads(marker.read_text())


def release(folder: Path, pattern: str) -> None:
    marker = marker_path(folder, pattern)
    marker.with_name(marker.name + ".release").touch()


@contextlib.contextmanager
def one_thread():
    """Train here as a one-CPU trial or child does: the thread count decides the order of sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def assert_same_rows(got: list[dict], want: list[dict], what: str) -> None:
    """Epoch by epoch, every figure of ``want`` (timings aside) equal in ``got``: exactly."""
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want], what
    for g, w in zip(got, want):
        differ = {k: (g.get(k), v) for k, v in w.items()
                  if k.rsplit("/", 1)[-1] not in TIMING and not same(g.get(k), v)}
        assert not differ, f"{what}, epoch {w['epoch']}: {differ}"


def reference_reports(storage: Path, name: str, trial_id: str) -> list[dict]:
    """What an uninterrupted trial reports, epoch by epoch: its configuration trained here, in one
    thread, through the trainable's own flattening (Tune's result rows hold the same keys)."""
    from search.space import load_space
    from search.trainable import flatten_report

    search_dir = storage / name
    space = load_space(search_dir / "space.yaml")
    info = json.loads((search_dir / "search.json").read_text())
    first = (next(search_dir.glob(f"t*_{trial_id}")) / "result.json").read_text().splitlines()[0]
    params = json.loads(first)["config"]
    config = space.train_config(params, info["stores"][space.feature_config(params).key()],
                                checkpoint_dir=None)
    rows = []

    def report(epoch, metrics, ckpt):
        rows.append(flatten_report(metrics, config.epochs, space.objective))

    with one_thread():
        if space.seeds > 1:
            train_seeds(config, [config.seed + k for k in range(space.seeds)], report, evaluate_best=True)
        else:
            train(config, report, evaluate_best=True)
    return rows


def label_ids(storage: Path, name: str) -> dict[str, str]:
    """t001 -> Tune trial id, from the trial folders."""
    return {p.name.split("_")[0]: p.name.split("_", 1)[1] for p in (storage / name).glob("t*_*") if p.is_dir()}


def tune_epochs(search_dir: Path) -> dict[str, int]:
    """Tune trial id -> the epoch of its last result, as Tune's newest saved experiment state has it."""
    states = sorted(search_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except ValueError:  # Tune writes it aside and renames it; a reader can still meet an older one
        return {}
    out = {}
    for trial, runtime in data["trial_data"]:
        last = json.loads(runtime).get("last_result") or {}
        out[json.loads(trial)["trial_id"]] = int(last.get("epoch", 0))
    return out


def mlflow_server(tmp_path: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def lockstep_config(store, **kw) -> TrainConfig:
    return TrainConfig(**{"store": store, "model": ModelConfig(name="cnn", width=8), "epochs": 3, "batch_size": 8,
                          "mixup_alpha": 0.3, "enhancement": Enhancement("gms", mean_subtraction=True), **kw})
