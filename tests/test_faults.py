"""Faults, on a busy machine: a training run killed anywhere resumes to the uninterrupted history, for
one, two and three seeds; a search whose trial workers are killed at a trial's start, mid-epoch,
during a checkpoint, after a report and at its end ends with every trial where an uninterrupted
trial ends; a killed driver resumes; Ctrl-C stops a search and a prepare cleanly; a lost worker node
of a two-node cluster costs nothing; retries are counted in a row without a new epoch, and a trial
lost for good makes the search say so and fail.

Every kill lands at a named fault point (``asc.faults``): the code under test publishes a marker file
there and pauses, and the test kills once the marker is there. No sleep stands in for an event, so
the tests hold however busy the machine is; and it is busy: two CPU-burning processes run beside
every test of this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient
from ray.tune.schedulers import TrialScheduler

from asc.enhance import Enhancement
from asc.train import TrainConfig, train, train_seeds
from search.bench.chaos import marked_processes
from search.schedulers import PersistentASHA
from search.tuner import saved_trial_ids
from tests.helpers import (ENV, REPO, armed, assert_same_rows, check_records, check_study, ctrl_c_as_in_a_terminal,
                           finish, free_port, kill_group, label_ids, listening, lockstep_config, mlflow_runs,
                           one_thread, ray_nodes, reference_reports, release, run, search_cmd, tune_epochs,
                           tune_results, wait_fault, wait_for, wait_http)


@pytest.fixture(scope="module", autouse=True)
def busy_machine():
    """Two processes burning a core each at normal priority, for as long as this module's tests run
    (and no longer: each stops when its parent does, should the test runner be killed)."""
    burn = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass"
    burners = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]
    yield
    for proc in burners:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------------------------------
# A training run killed anywhere (asc alone)
# --------------------------------------------------------------------------------------------------
def _fit(config: TrainConfig, seeds: int, reported: list | None = None) -> list[list[dict]]:
    """Every seed's per-epoch history."""
    report = (lambda epoch, metrics, ckpt: reported.append(epoch)) if reported is not None else None
    with one_thread():
        if seeds == 1:
            return [train(config, report)["history"]]
        return [r["history"] for r in train_seeds(config, list(range(seeds)), report)["results"]]


_REFERENCE: dict = {}

# Every per-epoch draw of both augmentations (DIR's responses, Freq-MixStyle's lambdas and partners)
# on top of mixup's: what a resumed run must draw again exactly as the uninterrupted one did.
AUGMENTED = {"enhancement": Enhancement("gms", mean_subtraction=True, dir=(0.5, "micirp"), freq_mixstyle=(0.6, 0.4))}

# (seeds, the point the run is killed at, the epochs the resumed run reports, the training's settings):
# after a checkpoint is written, half-way through an epoch, between two seeds' epochs, and with a
# checkpoint half written.
KILLS = [
    (1, "epoch_end/seed=0/epoch=2", [3], {}),
    (1, "step/seed=0/epoch=2/step=2", [2, 3], {}),
    (1, "checkpoint/seed=0/epoch=2", [2, 3], {}),
    (2, "epoch_end/seed=1/epoch=2", [3], {}),
    (2, "step/seed=1/epoch=2/step=2", [3], {}),  # seed 0 has checkpointed epoch 2: seed 1 catches up
    (2, "epoch_end/seed=0/epoch=2", [3], {}),  # seed 0 at epoch 2, seed 1 at 1: it catches up, then both go on
    (2, "checkpoint/seed=1/epoch=2", [3], {}),
    (3, "epoch_end/seed=2/epoch=2", [3], {}),
    (3, "step/seed=0/epoch=2/step=2", [2, 3], {}),
    (3, "epoch_end/seed=1/epoch=2", [3], {}),
    (2, "step/seed=1/epoch=2/step=2", [3], AUGMENTED),
]


@pytest.mark.parametrize("seeds,point,reports,settings", KILLS,
                         ids=[f"{k}seed-{p.split('/')[0]}-{p.split('/')[1]}{'-dir+fms' if kw else ''}"
                              for k, p, _, kw in KILLS])
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_history(small_store, tmp_path, seeds, point, reports,
                                                                    settings):
    key = (seeds, bool(settings))
    if key not in _REFERENCE:
        _REFERENCE[key] = _fit(lockstep_config(small_store, **settings), seeds)
    config = lockstep_config(small_store, checkpoint_dir=str(tmp_path / "ckpt"), **settings)
    faults = tmp_path / "faults"
    child = subprocess.Popen([sys.executable, "-m", "tests.train_child", json.dumps(config.to_dict()),
                              json.dumps(list(range(seeds)))], cwd=REPO, env=armed(faults, point),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        info = wait_fault(faults, point, child, seconds=300)
        assert info["pid"] == child.pid and info["point"] == point
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    reported: list = []
    resumed = _fit(config, seeds, reported)
    assert reported == reports  # it did resume from where the kill left it, not from scratch
    for seed, (got, want) in enumerate(zip(resumed, _REFERENCE[key])):
        assert_same_rows(got, want, f"seed {seed}")


# --------------------------------------------------------------------------------------------------
# A search's trial workers killed anywhere
# --------------------------------------------------------------------------------------------------


# Fired in this order (one trial at a time): (the point, what it stands for).
WORKER_KILLS = [
    ("trial=t001/reported/epoch=1", "after a checkpoint reached Tune"),
    ("trial=t001/checkpoint/seed=1/epoch=2", "with the second seed's checkpoint half written"),
    ("trial=t001/end", "at the trial's end, before the next trial starts"),
    ("trial=t002/start", "at a trial's start"),
    ("trial=t002/step/seed=1/epoch=2/step=2", "half-way through the second seed's epoch"),
    ("trial=t003/epoch_end/seed=0/epoch=2", "between the two seeds' epochs"),
]


def test_trial_workers_killed_anywhere_end_every_trial_where_an_uninterrupted_one_ends(store, tmp_path):
    storage, faults = tmp_path / "runs", tmp_path / "faults"
    cmd = search_cmd(store, storage, "kill", "--num-samples", "3", "--max-concurrent", "1", "--seeds", "2",
                     sets=["epochs=3", "scheduler=none"])
    proc = subprocess.Popen(cmd, cwd=REPO, env=armed(faults, *(p for p, _ in WORKER_KILLS)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for pattern, _ in WORKER_KILLS:
            os.kill(wait_fault(faults, pattern, proc)["pid"], signal.SIGKILL)
        out, err = finish(proc, 600)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert proc.returncode == 0, err[-3000:]
    # one line per fault, and none of Ray's own messages on the console (they are in ray.log)
    lost = [line for line in out.splitlines() if "lost its worker" in line]
    assert len(lost) == len(WORKER_KILLS), out
    assert all("retrying from its last checkpoint" in line and "ray.log" in line for line in lost)
    assert "worker died" not in out + err and "Traceback" not in out + err, (out + err)[-3000:]
    assert "A worker died or was killed" in (storage / "kill" / "ray.log").read_text()

    records = check_records(f"sqlite:///{storage / 'mlflow.db'}", storage, "kill", 3)
    check_study(storage, "kill", records["results"])
    ids = label_ids(storage, "kill")
    retries = {r.info.run_name.split(" ")[0]: r.data.tags.get("retries") for r in records["trials"]}
    assert retries == {"t001": "3", "t002": "2", "t003": "1"}
    for label, trial_id in sorted(ids.items()):
        assert_same_rows(records["results"][trial_id], reference_reports(storage, "kill", trial_id), label)


def test_retries_are_counted_without_progress_and_a_trial_lost_for_good_fails_the_search(store, tmp_path):
    """--max-failures 1: t001 loses its worker after epoch 1 and again after epoch 2, each time once
    after a new epoch, and is not lost (Tune alone would count two failures of one allowed): it
    diverges at epoch 3, the first its last retry runs, and ends on the figures of epoch 2, restored
    with its checkpoint; t002 loses it at its start and again in its first epoch, twice without a new
    epoch: lost for good, named in the search's last line, which exits 1."""
    from asc.faults import INJECT_ENV

    storage, faults = tmp_path / "runs", tmp_path / "faults"
    points = ["trial=t001/reported/epoch=1", "trial=t001/reported/epoch=2", "trial=t002/start",
              "trial=t002/step/seed=0/epoch=1/step=2"]
    cmd = search_cmd(store, storage, "lost", "--num-samples", "2", "--max-concurrent", "1", "--max-failures", "1",
                     sets=["epochs=3", "scheduler=none"])
    env = {**armed(faults, *points), INJECT_ENV: "trial=t001/nan_loss/*/epoch=3"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for point in points:
            os.kill(wait_fault(faults, point, proc)["pid"], signal.SIGKILL)
        out, err = finish(proc, 600)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert proc.returncode == 1, err[-3000:]
    lines = [line for line in out.splitlines() if "lost its worker" in line]
    assert [line.split(" ")[0] for line in lines] == ["t001", "t001", "t002", "t002"], out
    assert "(failure 1 in a row without a new epoch, 1 retry allowed); retrying" in lines[0]
    assert "(failure 1 in a row without a new epoch, 1 retry allowed, 2 in all); retrying" in lines[1]
    assert "(failure 2 in a row without a new epoch, 1 retry allowed); no tries left" in lines[3]
    assert "FAILED for good: lost its worker" in lines[3]
    assert any(line.startswith("t001") and "diverged at epoch 3: " in line for line in out.splitlines()), out
    last = err.strip().splitlines()[-1]
    assert last.startswith("1 trial(s) failed for good, 2 failures in a row without a new epoch: t002"), err[-2000:]
    _, _, _, trials = mlflow_runs(f"sqlite:///{storage / 'mlflow.db'}", "lost")
    status = {r.info.run_name.split(" ")[0]: (r.info.status, r.data.tags.get("retries")) for r in trials}
    assert status == {"t001": ("FAILED", "2"), "t002": ("FAILED", "1")}, status  # retries: its second loss was the end
    (t001,) = [r for r in trials if r.info.run_name.startswith("t001")]
    assert t001.data.tags["diverged_at_epoch"] == "3" and t001.data.tags["epoch_reached"] == "2"
    # its figures: epoch 2's, as the checkpoint the retry restored holds them
    m = t001.data.metrics
    assert f"Metric B {100 * m['sel_metric_b']:.1f} ± " in t001.data.tags["mlflow.note.content"]
    row = next(line for line in out[out.index("trials by metric_b"):].splitlines() if line.startswith("t001"))
    assert "diverged@3" in row and f"{100 * m['sel_metric_b']:.1f}" in row, row


# --------------------------------------------------------------------------------------------------
# The driver killed, or stopped with Ctrl-C
# --------------------------------------------------------------------------------------------------


def test_killed_driver_then_resume_finishes_the_search_with_the_study_and_ashas_rungs_intact(store, tmp_path):
    """The driver dies half-way through the second of three trials, before its first ASHA rung
    (epoch 3 of 4); `resume` continues it from its checkpoint. The Optuna study and ASHA's state are
    on the driver's own disk (--study-dir), and ASHA decides after the resume what it would have
    decided uninterrupted, given the same results: its rung still holds the first trial's value."""
    storage, faults = tmp_path / "runs", tmp_path / "faults"
    point = "trial=t002/reported/epoch=2"
    studies = tmp_path / "studies"  # --study-dir: the study on the driver's own disk, as on a cluster
    cmd = search_cmd(store, storage, "crash", "--num-samples", "3", "--max-concurrent", "1",
                     "--study-dir", str(studies), sets=["epochs=4", "scheduler.grace_period=3"])
    proc = subprocess.Popen(cmd, cwd=REPO, env=armed(faults, point), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        paused = wait_fault(faults, point, proc)
        # The driver dies once Tune's saved state holds the half-way trial: one finished, one at epoch 2.
        t002 = lambda: label_ids(storage, "crash").get("t002")  # noqa: E731
        wait_for(lambda: t002() and tune_epochs(storage / "crash").get(t002()) == 2, 600,
                  "Tune's saved state to hold the second trial's epoch 2", proc)
    finally:
        kill_group(proc)
        with contextlib.suppress(ProcessLookupError):
            os.kill(paused["pid"], signal.SIGKILL)  # it dies with its raylet anyway
    ids = label_ids(storage, "crash")
    assert {ids["t001"], ids["t002"]} <= saved_trial_ids(storage / "crash")  # what resume tells the searcher
    results_before = tune_results(storage, "crash", raw=True)
    assert [r["epoch"] for r in results_before[ids["t001"]]] == [1, 2, 3, 4]

    assert (studies / "crash" / "optuna.db").is_file() and not (storage / "crash" / "optuna.db").exists()
    # The tracking store moves (as a tracking server to a new head's address): a resume at the old
    # address is refused, naming it; at the new one (--mlflow-uri) the search's runs go on there.
    recorded, moved = f"sqlite:///{storage / 'mlflow.db'}", tmp_path / "moved"
    moved.mkdir()
    for part in storage.glob("mlflow.db*"):  # with a journal the killed driver may have left
        part.rename(moved / part.name)
    resume = [sys.executable, "-m", "search", "resume", "crash", "--storage", str(storage)]
    lost = run(resume, timeout=120)
    assert lost.returncode == 2 and f"MLflow store {recorded}: no such database" in lost.stderr, lost.stderr
    resume += ["--mlflow-uri", f"sqlite:///{moved / 'mlflow.db'}"]
    (studies / "crash").rename(studies / "away")  # resumed on a machine without the study: refused
    away = run(resume, timeout=120)
    assert away.returncode == 2 and "the search's Optuna study is not here" in away.stderr, away.stderr
    (studies / "away").rename(studies / "crash")
    # an experiment made before searches carried their runs table's view gains it on resume
    view = "mlflow.sharedViewState.trials"
    old = MlflowClient(resume[-1])
    experiment_id = json.loads((storage / "crash" / "search.json").read_text())["experiment_id"]
    shown = old.get_experiment(experiment_id).tags[view]
    old.delete_experiment_tag(experiment_id, view)
    old.delete_experiment_tag(experiment_id, "train_devices")  # and the devices fuse reads where the store is not
    done = run(resume, timeout=600)
    assert old.get_experiment(experiment_id).tags[view] == shown
    assert old.get_experiment(experiment_id).tags["train_devices"] == "a,b,c"
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming search 'crash'" in done.stdout and "3 trials: " in done.stdout
    assert f"(--mlflow-uri; the search ran with {recorded}, and its runs are here)" in done.stdout
    assert json.loads((storage / "crash" / "search.json").read_text())["mlflow_uri"] == resume[-1]
    assert not (storage / "mlflow.db").exists()  # nothing went to the old address
    records = check_records(resume[-1], storage, "crash", 3)
    check_study(studies, "crash", records["results"])
    assert not records["orphans"]
    results_after = tune_results(storage, "crash", raw=True)
    assert [r["epoch"] for r in results_after[ids["t001"]]] == [1, 2, 3, 4]  # not run again
    resumed = records["results"][ids["t002"]]
    after = [r for r in resumed if r["epoch"] > 2]
    assert [r["iterations_since_restore"] for r in after] == list(range(1, len(after) + 1))  # from epoch 3 on
    assert_same_rows(resumed, reference_reports(storage, "crash", ids["t002"]), "t002")

    # ASHA's state: beside the study, and its rung still holds t001's value, recorded before the driver died
    ids = label_ids(storage, "crash")  # t003 too, now
    state = json.loads((studies / "crash" / "asha_state.json").read_text())
    assert not (storage / "crash" / "asha_state.json").exists()
    rung3 = {tid for bracket in state["rungs"] for milestone, recorded in bracket if milestone == 3 for tid in recorded}
    assert rung3 == {ids["t001"], ids["t002"], ids["t003"]}, state
    # given the same results, a scheduler that was never interrupted stops the same trials at the same epochs
    fresh = PersistentASHA(time_attr="epoch", metric="objective", mode="max", max_t=4, grace_period=3,
                           reduction_factor=2)
    for label in ("t001", "t002", "t003"):
        trial, rows = SimpleNamespace(trial_id=ids[label]), records["results"][ids[label]]
        fresh.on_trial_add(None, trial)
        decided = next(r["epoch"] for r in rows if fresh.on_trial_result(None, trial, r) == TrialScheduler.STOP)
        assert decided == rows[-1]["epoch"], (label, decided, [r["epoch"] for r in rows])
    finished = sum(records["results"][tid][-1]["epoch"] == 4 for tid in ids.values())
    assert f"3 trials: {finished} finished, {3 - finished} stopped by ASHA, 0 failed" in done.stdout

    again = run([sys.executable, "-m", "search", "resume", "nope", "--storage", str(storage)], timeout=120)
    assert again.returncode == 2 and "no search named 'nope'" in again.stderr


def test_ctrl_c_during_prepare_is_one_line_and_leaves_no_staging(tmp_path):
    """SIGINT to the process group, as a terminal's Ctrl-C, while a shard task is paused right after
    writing its shard: exit 130, one line, no half store."""
    data, store_root, faults = tmp_path / "data", tmp_path / "store", tmp_path / "faults"
    assert run([sys.executable, "-m", "asc", "synth", str(data), "--segments-per-scene", "4", "--parallel-per-scene",
                "2", "--seconds", "2", "--sample-rate", "22050"]).returncode == 0
    point = "shard_written/shard=1"
    proc = subprocess.Popen([sys.executable, "-m", "search", "prepare", str(data), "--store", str(store_root),
                             "--sample-rate", "22050", "--n-fft", "1024", "--n-mels", "32", "64", "--shard-size", "4",
                             "--num-cpus", "2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=armed(faults, point), start_new_session=True, preexec_fn=ctrl_c_as_in_a_terminal)
    try:
        wait_fault(faults, point, proc)
        assert list((store_root / ".staging").glob("*/part-00001.arrow"))  # mid-build: a shard is written
        os.killpg(proc.pid, signal.SIGINT)
        _, err = finish(proc, 300)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.strip()] == ["interrupted: stopped by Ctrl-C"], err
    assert not store_root.exists()  # the store root it made, taken back: no half store, no empty folders


# --------------------------------------------------------------------------------------------------
# A lost worker node
# --------------------------------------------------------------------------------------------------
NODE_MARK = "ASC_TEST_NODE"  # in the environment of one node's Ray processes (they inherit `ray start`'s)


def node_processes(mark: str) -> list[int]:
    """Pids of every process of the Ray node started with ``NODE_MARK=mark``: its raylet, its agents
    and its workers."""
    return marked_processes(NODE_MARK, mark)


def test_a_two_node_search_with_a_real_mlflow_server_survives_the_loss_of_its_worker_node(store, tmp_path):
    """Head 127.0.0.2 and worker 127.0.0.3 (`ray start`, one CPU each) and `mlflow server` on
    loopback; trials run on both nodes and every record goes through the server. The worker node is
    killed whole (raylet, agents, workers, by process id) while its trial is paused after its first
    epoch's report: the trial continues from that checkpoint on the head, and the search finishes
    with every trial recorded once. The head's trial pauses after its second epoch until the search
    has printed its line about the lost node: Ray marks a node dead only after its health checks fail,
    and a search that ended sooner would never say it (the trial's own line comes from its worker's
    death, which Ray sees at once)."""
    port, mlflow_port = free_port(), free_port()
    # unique to this run: another test run on the machine (CI beside a developer's) kills its own node by its mark
    mark = f"worker-{uuid.uuid4().hex}"
    faults = tmp_path / "faults"
    point, on_head = "trial=*/reported/epoch=1", "trial=*/reported/epoch=2"
    # The head notices a dead node after 5 failed health checks: at Ray's 3 s period, 15 s; 1 s here.
    env = {**ENV, "RAY_AUTH_MODE": "token", "RAY_health_check_period_ms": "1000"}
    worker_env = {**armed(faults, point, base=env), NODE_MARK: mark}
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1",
             "--port", str(mlflow_port), "--workers", "1"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        # --block keeps each node's Ray processes in the process group of the `ray start` we started,
        # so that the test stops exactly them (never `ray stop`, which would stop every Ray here).
        procs.append(subprocess.Popen(["ray", "start", "--block", "--head", "--node-ip-address=127.0.0.2",
                                       f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                                       "--disable-usage-stats"], env=armed(faults, on_head, base=env),
                                      stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
        wait_for(lambda: listening("127.0.0.2", port), 300, "the Ray head", procs[-1])
        worker_node = subprocess.Popen(["ray", "start", "--block", f"--address=127.0.0.2:{port}",
                                        "--node-ip-address=127.0.0.3", "--num-cpus=1"], env=worker_env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(worker_node)
        wait_for(lambda: ray_nodes(f"127.0.0.2:{port}", env) == 2, 300, "the worker node to join", worker_node)
        wait_http(f"http://127.0.0.1:{mlflow_port}/health", 300)
        uri = f"http://127.0.0.1:{mlflow_port}"
        search = subprocess.Popen(
            search_cmd(store, tmp_path / "runs", "cluster", "--num-samples", "2", "--max-concurrent", "2",
                       "--address", f"127.0.0.2:{port}", "--mlflow-uri", uri, sets=["epochs=3", "scheduler=none"]),
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(search)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(search.stdout.readline, "")), daemon=True)
        reader.start()
        paused = wait_fault(faults, point, search)
        victims = node_processes(mark)
        assert paused["pid"] in victims and len(victims) >= 3  # raylet, an agent, the trial's worker at least
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_fault(faults, on_head, search)  # the head's trial holds the search open ...
        wait_for(lambda: any(line.startswith("node 127.0.0.3 lost") for line in lines), 600,
                  "the search's line about the lost node", search)
        release(faults, on_head)  # ... until the search has said the node is lost
        search.wait(timeout=600)
        reader.join(timeout=60)
        out, err = "".join(lines), search.stderr.read()
        assert search.returncode == 0, err[-3000:]
        assert f"open {uri}/#/experiments/" in out
        faults_seen = [line for line in out.splitlines() if "lost its" in line or line.startswith("node ")]
        assert len(faults_seen) == 2, out  # the trial's line and the node's
        assert any(line.startswith("node 127.0.0.3 lost: Ray marked it dead") for line in faults_seen), faults_seen
        assert any(" on 127.0.0.3 (failure 1 in a row without a new epoch, 3 retries allowed); retrying from its "
                   "last checkpoint" in line for line in faults_seen)
        # and none of Ray's own messages about the dead node or its worker on the console
        assert not any(text in out + err for text in ("marked dead", "worker died", "Traceback")), (out + err)[-3000:]
        records = check_records(uri, tmp_path / "runs", "cluster", 2)
        check_study(tmp_path / "runs", "cluster", records["results"])
        nodes = {row["node_ip"] for rows in records["results"].values() for row in rows}
        assert nodes == {"127.0.0.2", "127.0.0.3"}, nodes
        moved = [rows for rows in records["results"].values() if {r["node_ip"] for r in rows} == nodes]
        assert len(moved) == 1 and moved[0][-1]["node_ip"] == "127.0.0.2"
        assert moved[0][-1]["iterations_since_restore"] == 2  # epochs 2 and 3 after the move, from epoch 1's checkpoint
        assert any((tmp_path / "server-artifacts").rglob("predictions.parquet"))  # stored by the server
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                kill_group(proc)
            except ProcessLookupError:
                pass
        for pid in node_processes(mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)



def test_a_node_the_autoscaler_removes_is_not_called_lost():
    """Ray's reason for a dead node decides the line: an idle node drained by the autoscaler (cluster.yaml
    removes idle workers) or a stopped one left as planned; any other death is a lost node."""
    from search.tuner import node_left_line

    node = {"NodeManagerAddress": "10.0.0.7", "DeathReasonMessage": ""}
    assert node_left_line({**node, "DeathReason": 4}, "ray.log") == "node 10.0.0.7 left the cluster (idle, removed by the autoscaler)"
    assert node_left_line({**node, "DeathReason": 1}, "ray.log") == "node 10.0.0.7 left the cluster (stopped)"
    lost = node_left_line({**node, "DeathReason": 2, "DeathReasonMessage": "health check failed\nmore"}, "ray.log")
    assert lost == ("node 10.0.0.7 lost: Ray marked it dead (health check failed); its trials retry from their last "
                    "checkpoints on the nodes left (Ray's report: ray.log)")
    assert node_left_line({**node, "DeathReason": 3}, "ray.log").startswith("node 10.0.0.7 lost (preempted): ")
