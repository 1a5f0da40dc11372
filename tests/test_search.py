"""The search on real components: `python -m search run` / `resume` as a user runs them, on a local
Ray instance, on a two-node Ray cluster started on loopback, with a trial's worker killed, with the
driver killed, and against a real `mlflow server`; then what MLflow and the Optuna study hold.

Every search here is spaces/smoke.yaml shrunk with --set (tiny clips, a few epochs), so that the
whole module takes a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import (ENV, REPO, SHRINK, SMOKE, check_records, check_study, free_port, mlflow_runs, run,
                           search_cmd, study)


# --------------------------------------------------------------------------------------------------
def test_smoke_search_on_local_ray_records_every_trial_and_prunes_honestly(store, tmp_path):
    # A reduction factor of 4 at a grace period of 1 keeps only the best quarter past epoch 1: with
    # one trial at a time, ASHA stops some of the six, and Optuna must hear PRUNED for them.
    cmd = search_cmd(store, tmp_path / "runs", "smoke", "--num-samples", "6", "--max-concurrent", "1",
                     sets=["epochs=3", "scheduler.reduction_factor=4", "lr={float: [0.0001, 0.01], log: true}"])
    done = run(cmd)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "best 6 of 6 trials by metric_b" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    assert "then open http://127.0.0.1:5000/#/experiments/" in out
    assert "epoch   1/3" in out and "B&C" in out
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    records = check_records(uri, tmp_path / "runs", "smoke", 6)
    check_study(tmp_path / "runs", "smoke", records["results"])
    stopped = [rows for rows in records["results"].values() if rows[-1]["epoch"] < rows[-1]["epochs"]]
    assert stopped, "ASHA stopped no trial: the pruned path went untested"
    stopped_runs = [r for r in records["trials"] if r.data.tags["stopped_early"] == "true"]
    assert len(stopped_runs) == len(stopped) and all(r.info.status == "FINISHED" for r in stopped_runs)

    # The address printed opens MLflow's runs table on the search's own view: its filter selects
    # the trials alone (the fusions have a view of their own), best objective first, and every column it shows is
    # something they logged.
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    assert experiment.tags["train_devices"] == "a,b,c"  # what `fuse` pools as B&C where the store is not at hand
    assert f"#/experiments/{experiment.experiment_id}/runs?viewStateShareKey=trials&" in out
    view = json.loads(experiment.tags["mlflow.sharedViewState.trials"])
    shown = client.search_runs([experiment.experiment_id], filter_string=view["searchFilter"],
                               order_by=[view["orderByKey"].replace("`", "") + " DESC"])
    assert sorted(r.info.run_id for r in shown) == sorted(r.info.run_id for r in records["trials"])
    assert [r.data.metrics["objective"] for r in shown] == sorted((r.data.metrics["objective"] for r in shown),
                                                                  reverse=True)
    assert view["orderByAsc"] is False and view["columnOrder"] == view["selectedColumns"]
    for column in view["selectedColumns"]:
        kind, key = column.split(".", 1)
        key = key.strip("`")
        if kind != "attributes":
            assert any(key in getattr(r.data, kind) for r in shown), column
    assert {"metrics.`objective`", "params.`lr`"} <= set(view["selectedColumns"])

    # The same seed proposes the same configurations (a second search, same space and seed).
    again = run(search_cmd(store, tmp_path / "runs", "smoke-again", "--num-samples", "2", "--max-concurrent", "1",
                           sets=["epochs=1", "scheduler.reduction_factor=4", "lr={float: [0.0001, 0.01], log: true}"]))
    assert again.returncode == 0, again.stderr[-3000:]
    first = sorted(study(tmp_path / "runs", "smoke").trials, key=lambda t: t.number)[:2]
    second = sorted(study(tmp_path / "runs", "smoke-again").trials, key=lambda t: t.number)
    assert [t.params for t in first] == [t.params for t in second]

    # A search of the same name is refused (resume continues it), naming what to run.
    dup = run(cmd, timeout=120)
    assert dup.returncode == 2 and "resume smoke" in dup.stderr and len(dup.stderr.strip().splitlines()) == 1


def test_more_cpus_per_trial_than_the_cluster_has_is_one_line_before_any_trial(store, tmp_path):
    """Checked against the Ray cluster the search starts (the checks before Ray starts run in-process in
    tests/test_cli.py): one line, and not even an empty --storage left behind."""
    greedy = run(search_cmd(store, tmp_path / "runs", "w", "--cpus-per-trial", "4096"), timeout=180)
    assert greedy.returncode == 2 and "--cpus-per-trial 4096: the Ray cluster has" in greedy.stderr
    assert len(greedy.stderr.strip().splitlines()) == 1, greedy.stderr[-2000:]
    assert not (tmp_path / "runs").exists()


def test_resume_takes_the_store_it_ran_with_at_a_new_address_and_refuses_another(monkeypatch, tmp_path):
    """``resume``'s tracking URI: --mlflow-uri, else $MLFLOW_TRACKING_URI, else the recorded one; a new
    address must reach the search's own runs (an option that does not is refused, the variable is
    passed over, saying so)."""

    from asc.errors import AscError
    from search.tracking import resume_tracking_uri

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    recorded, other = f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}", f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    client = MlflowClient(recorded)
    experiment = client.create_experiment("s", artifact_location=str(tmp_path / "art"))
    parent = client.create_run(experiment).info.run_id
    MlflowClient(other).create_run(MlflowClient(other).create_experiment("s", artifact_location=str(tmp_path / "x")))
    (tmp_path / "new").symlink_to(tmp_path / "a")  # the same database, reached by another path
    moved = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    assert resume_tracking_uri(recorded, None, experiment, parent) == (recorded, "")
    uri, line = resume_tracking_uri(recorded, moved, experiment, parent)
    assert uri == moved and line == f"MLflow: {moved} (--mlflow-uri; the search ran with {recorded}, and its runs are here)"
    with pytest.raises(AscError, match=rf"^--mlflow-uri {other}: not the store this search ran with \(no run {parent}\); "
                                       rf"it ran with {recorded}$"):
        resume_tracking_uri(recorded, other, experiment, parent)
    with pytest.raises(AscError, match="no such database"):
        resume_tracking_uri(recorded, f"sqlite:///{tmp_path / 'b' / 'none.db'}", experiment, parent)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", moved)
    assert resume_tracking_uri(recorded, None, experiment, parent)[0] == moved
    assert resume_tracking_uri(recorded, recorded, experiment, parent) == (recorded, "")  # the option first
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)  # set for another project: passed over, said
    assert resume_tracking_uri(recorded, None, experiment, parent) == (
        recorded, f"note: $MLFLOW_TRACKING_URI {other} does not hold this search (no run {parent}); "
                  f"MLflow: {recorded}, as it ran")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing answers there
    uri, line = resume_tracking_uri(recorded, None, experiment, parent)
    assert uri == recorded and "not reachable" in line and len(line.splitlines()) == 1
    assert not (tmp_path / "b" / "none.db").exists()


def test_a_trial_run_whose_creation_lost_its_answer_is_not_made_twice(tmp_path, monkeypatch):
    """The tracking server made the trial's run but its answer was lost: the next try finds that run
    rather than making a second one for the same trial."""
    from types import SimpleNamespace

    from search.space import parse_space
    from search.tracking import TRIAL_TAG, MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("lost", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment).info.run_id
    space = parse_space({"params": {"model": "cnn", "lr": {"choice": [0.001, 0.01]}}}, "s.yaml")
    tracker = MlflowTracker(uri, experiment, parent, "lost", space, {})
    tracker.client.delays = (0, 0)
    real = tracker.client._client.create_run
    answers = []

    def lost_once(*args, **kwargs):
        run = real(*args, **kwargs)  # made on the server...
        answers.append(run)
        if len(answers) == 1:
            raise ConnectionResetError("[Errno 104] Connection reset by peer")  # ...and the answer lost
        return run

    monkeypatch.setattr(tracker.client._client, "create_run", lost_once)
    trial = SimpleNamespace(trial_id="abc12_00001", experiment_tag="1_lr=0.01", config={**space.fixed, "lr": 0.01})
    run_id = tracker.run_id(trial)
    runs = client.search_runs([experiment], filter_string=f"tags.{TRIAL_TAG} = 'abc12_00001'")
    assert len(answers) == 1 and [r.info.run_id for r in runs] == [run_id]


def test_a_write_is_tried_again_while_the_server_is_unreachable_and_not_after_another_failure():
    """What a trial's model and artifacts go through (and every RetryingClient call): a connection
    refused twice, then an answer; a failure no later try can fix is raised at once."""
    from search.tracking import retry_transient

    tries = []

    def flaky():
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        return "logged"

    assert retry_transient(flaky, (0, 0, 0)) == "logged" and len(tries) == 3  # two refusals, then the answer
    tries.clear()
    with pytest.raises(ConnectionRefusedError):
        retry_transient(flaky, (0,))  # out of tries
    with pytest.raises(ValueError):
        retry_transient(lambda: (_ for _ in ()).throw(ValueError("a bug")), (0, 0))


def test_kept_writes_are_sent_in_order_and_one_that_can_never_be_written_is_named(tmp_path, capsys):
    """Writes kept while the server did not answer are sent, in order, when it answers; a kept write
    that the store refuses for good (its run deleted meanwhile) is dropped with a line naming it."""
    from mlflow.tracking import MlflowClient

    from search.tracking import RetryingClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    plain = MlflowClient(uri)
    experiment = plain.create_experiment("kept")
    gone, kept = (plain.create_run(experiment).info.run_id for _ in range(2))
    plain.delete_run(gone)
    client = RetryingClient(uri, delays=(0,))
    client.pending.extend([("set_tag", (kept, "order", "1"), {}), ("set_tag", (gone, "order", "x"), {}),
                           ("set_tag", (gone, "order", "y"), {}), ("set_tag", (kept, "order", "2"), {})])
    client._warned = True  # as when the server stopped answering
    assert client.flush(delays=(0,)) == 0 and not client.pending
    assert plain.get_run(kept).data.tags["order"] == "2" and client.refused == {gone: 2}
    err = [line for line in capsys.readouterr().err.splitlines() if " INFO mlflow" not in line]  # MLflow's own
    assert len(err) == 2 and f"refused a kept write (set_tag to run {gone}: MlflowException" in err[0], err
    assert err[1].endswith("every kept write is sent, but 2 to 1 run(s) it refused (named above)"), err


def test_retry_waits_for_a_tracking_server_are_a_setting_and_a_bad_one_is_one_line(monkeypatch, tmp_path):
    from asc.errors import AscError
    from search.tracking import RETRY_ENV, RetryingClient, check_tracking_uri, retry_delays

    assert retry_delays() == (1, 2, 4, 8, 16)
    monkeypatch.setenv(RETRY_ENV, "0.5, 3")
    assert retry_delays() == (0.5, 3.0) and RetryingClient("http://127.0.0.1:1").delays == (0.5, 3.0)
    monkeypatch.setenv(RETRY_ENV, "2,soon")
    with pytest.raises(AscError, match=f"{RETRY_ENV}='2,soon': give seconds separated by commas"):
        check_tracking_uri("http://127.0.0.1:1")
    with pytest.raises(AscError, match=RETRY_ENV):
        check_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(RETRY_ENV, "1,-2")
    with pytest.raises(AscError, match="a delay is negative or not a number"):
        retry_delays()


def test_an_objective_the_selection_clips_cannot_measure_is_refused_before_ray_starts(store):
    """acc_unseen on a set whose selection clips hold no unseen device: one line naming the space, the
    objective and what would measure it; Metric B, whose B and C clips are there, passes (a selection
    without one of them: tests/test_objectives.py)."""
    from asc.errors import AscError
    from search.space import load_space
    from search.stores import resolve_stores

    unseen = load_space(SMOKE, [*SHRINK, "objective=acc_unseen"])
    with pytest.raises(AscError, match="acc_unseen needs clips of devices unseen in training") as err:
        resolve_stores(unseen, str(store))
    assert "\n" not in str(err.value) and "smoke.yaml" in str(err.value)
    assert resolve_stores(load_space(SMOKE, list(SHRINK)), str(store))


def test_pareto_search_prints_and_records_its_front(store, tmp_path):
    storage = tmp_path / "runs"
    cmd = [sys.executable, "-m", "search", "run", str(REPO / "spaces" / "pareto.yaml"), "--store", str(store),
           "--storage", str(storage), "--num-samples", "3", "--max-concurrent", "1"]
    for item in [*SHRINK, "model=cnn", "epochs=1", "enhancement={choice: [none, mean_subtraction]}", "num_workers=2"]:
        cmd += ["--set", item]
    done = run(cmd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ASHA is off: it is single-objective" in done.stdout and "Pareto front:" in done.stdout
    # loader processes within the CPUs Ray gave the trial (one, by default): the trainer's own
    assert "t001: num_workers 2 -> 0: the trial has 1 CPU(s)" in done.stdout
    client, _, parent, trials = mlflow_runs(f"sqlite:///{storage / 'mlflow.db'}", "pareto")
    assert len(trials) == 3 and parent[0].data.tags["note"].startswith("ASHA is off")
    # the run note a user lands on in MLflow's UI: the table and the command that fuses the trials
    run_note = parent[0].data.tags["mlflow.note.content"]
    assert "| trial | state | chosen epoch | selection clips: Metric B % |" in run_note  # no objective column
    assert "Pareto front's: `pareto_front.txt`" in run_note
    assert f"python -m search fuse --experiment pareto --mlflow-uri sqlite:///{storage / 'mlflow.db'}" in run_note
    artifacts = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {"pareto_front.txt", "optuna_pareto_front.png"} <= artifacts
    front = study(storage, "pareto").best_trials
    assert front and all(len(t.values) == 2 for t in front)
    assert all("objective_acc_bc" in r.data.metrics and "objective_abs_gap" in r.data.metrics for r in trials)


def test_searcher_tells_optuna_pruned_with_intermediate_values_also_for_a_grid(tmp_path):
    """The Optuna side alone, with a real RDB study: an ASHA-stopped trial (last epoch < epochs) is
    PRUNED with its intermediate values; a finished one COMPLETE; the grid sampler's end-of-grid stop
    does not turn a PRUNED tell into an error."""
    import optuna
    from optuna.trial import TrialState

    from search.space import parse_space
    from search.tuner import _searcher_class, make_sampler, study_storage

    space = parse_space({"sampler": "grid", "objective": "metric_a", "scheduler": {"name": "asha", "max_t": 3},
                         "params": {"model": "cnn", "epochs": 3, "mixup_alpha": {"choice": [0.0, 0.3]}}}, "g.yaml")
    searcher = _searcher_class()(space=space, metric="objective", mode="max", sampler=make_sampler(space, 0, 2),
                                 study_name="g", storage=study_storage(tmp_path))
    configs = [searcher.suggest("t1"), searcher.suggest("t2")]
    assert sorted(c["mixup_alpha"] for c in configs) == [0.0, 0.3] and configs[0]["model"] == "cnn"
    for epoch in (1, 2, 3):
        searcher.on_trial_result("t1", {"objective": 0.1 * epoch, "epoch": epoch, "epochs": 3})
    searcher.on_trial_complete("t1", {"objective": 0.3, "epoch": 3, "epochs": 3})
    searcher.on_trial_result("t2", {"objective": 0.05, "epoch": 1, "epochs": 3})
    searcher.on_trial_complete("t2", {"objective": 0.05, "epoch": 1, "epochs": 3})
    trials = {t.user_attrs["tune_trial_id"]: t for t in optuna.load_study(
        study_name="g", storage=study_storage(tmp_path)).get_trials()}
    assert trials["t1"].state == TrialState.COMPLETE and trials["t1"].value == pytest.approx(0.3)
    assert trials["t1"].intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3})
    assert trials["t2"].state == TrialState.PRUNED and trials["t2"].intermediate_values == {1: 0.05}


def test_each_configuration_trains_once_divergence_is_its_own_state_and_a_warm_start_trains_none(store, tmp_path):
    """TPE with eight samples over four configurations trains four; two of them diverge (a non-finite
    loss injected at epoch 2, and at epoch 1, before the trial reported anything) and are told as such
    everywhere, ranked after the trials that ended well; the search chooses on the evaluation split
    (protocol paper) and says so; a second search warm-started from the first trains nothing."""
    from optuna.trial import TrialState

    from asc.faults import INJECT_ENV

    storage = tmp_path / "runs"
    sets = ["epochs=2", "scheduler=none", "protocol=paper", "mixup_alpha=0.0",
            "enhancement={choice: [none, mean_subtraction]}", "lr={choice: [0.001, 0.003]}"]
    env = {**ENV, INJECT_ENV: "trial=*/nan_loss/lr=0.003/enh=plain/epoch=1,trial=*/nan_loss/lr=0.003/enh=mean-sub/epoch=2"}
    done = run(search_cmd(store, storage, "once", "--num-samples", "8", "--max-concurrent", "1", sets=sets), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "holds 4 distinct configuration(s): each is trained once (num_samples 8)" in out
    assert "4 trials: 2 finished, 0 stopped by ASHA, 2 diverged, 0 failed" in out
    assert "4 distinct configuration(s) trained of the 4 the space holds" in out
    # the result line and the end line of each
    assert out.count("diverged at epoch 2: ") == 2 and out.count("diverged at epoch 1: ") == 2
    rows = [line.split() for line in out[out.index("best 4 of 4 trials"):].splitlines() if line.startswith("t0")]
    states = [next(w for w in row if w == "done" or w.startswith("diverged@")) for row in rows]
    assert states[:2] == ["done", "done"] and sorted(states[2:]) == ["diverged@1", "diverged@2"], states
    assert "chosen on: evaluation split" in out and "protocol paper" in out
    assert "note: protocol paper: the epochs and the sampler choose on the evaluation split" in out
    client, experiment, parent, trials = mlflow_runs(f"sqlite:///{storage / 'mlflow.db'}", "once")
    assert len(trials) == 4 and parent[0].data.tags["selected_on"] == "evaluation"
    diverged = [r for r in trials if r.data.tags.get("diverged_at_epoch") in ("1", "2")]
    assert len(diverged) == 2 and all(r.info.status == "FAILED" and r.data.params["lr"] == "0.003" for r in diverged)
    assert sorted(r.data.tags["epoch_reached"] for r in diverged) == ["0", "1"]
    assert all(r.data.tags["stopped_early"] == "false" and r.data.tags["selected_on"] == "evaluation" for r in trials)
    assert len({r.data.tags["config_key"] for r in trials}) == 4
    told = study(storage, "once").get_trials()
    real = [t for t in told if "duplicate_of" not in t.user_attrs]
    assert sorted(t.state.name for t in real) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    assert sorted(t.user_attrs.get("diverged_at_epoch") for t in real if t.state == TrialState.FAIL) == [1, 2]

    refused = run([sys.executable, "-m", "search", "fuse", "--experiment", "once", "--mlflow-uri",
                   f"sqlite:///{storage / 'mlflow.db'}"], timeout=120)
    assert refused.returncode == 2 and "chose their epochs on the evaluation clips (protocol paper)" in refused.stderr
    fused = run([sys.executable, "-m", "search", "fuse", "--experiment", "once", "--mlflow-uri",
                 f"sqlite:///{storage / 'mlflow.db'}", "--protocol", "paper"], timeout=300)
    assert fused.returncode == 0, fused.stderr[-3000:]
    assert "chosen on: evaluation split (%)" in fused.stdout and "selection clips (%)" not in fused.stdout

    again = run(search_cmd(store, storage, "again", "--num-samples", "8", "--warm-start", "once", sets=sets), env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "warm start from 'once': 4 trial(s) taken (2 complete, 2 diverged); none of them is trained again" in again.stdout
    assert "0 trials: 0 finished" in again.stdout
    warm = study(storage, "again").get_trials()
    assert len(warm) == 4 and all("warm_start_from" in t.user_attrs for t in warm)
    missing = run(search_cmd(store, storage, "third", "--warm-start", "nope", sets=sets), timeout=120)
    assert missing.returncode == 2 and "--warm-start nope: no such experiment" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not (storage / "third").exists()
    # refused before --data builds a store of its own (a new store root: nothing made there)
    other = run(search_cmd(tmp_path / "new-stores", storage, "third", "--warm-start", "once", "--data",
                           str(store.parent / "data"), sets=[s for s in sets if s != "protocol=paper"]), timeout=120)
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1
    assert "--warm-start once: its trials were compared by protocol paper, this search by validation" in other.stderr
    assert not (storage / "third").exists() and not (tmp_path / "new-stores").exists()
    # other features (24 Mel bands): refused on the names of the stores --data would build, before it builds them
    bands = run(search_cmd(tmp_path / "new-stores", storage, "third", "--warm-start", "once", "--data",
                           str(store.parent / "data"), sets=[*sets, "n_mels=24"]), timeout=120)
    assert bands.returncode == 2 and len(bands.stderr.strip().splitlines()) == 1, bands.stderr
    assert "--warm-start once: its trials read other feature stores (logmel32-" in bands.stderr
    assert "than this search (logmel24-" in bands.stderr
    assert not (storage / "third").exists() and not (tmp_path / "new-stores").exists()
    fresh = run(search_cmd(store, tmp_path / "fresh", "x", "--warm-start", "once", sets=sets), timeout=120)
    assert fresh.returncode == 2 and "--warm-start once: no MLflow database at" in fresh.stderr, fresh.stderr
    assert not (tmp_path / "fresh").exists()  # no empty database, no storage folder


def test_a_model_left_half_logged_by_a_dead_driver_is_dropped_before_the_run_logs_its_own(tmp_path):

    from search.tracking import drop_earlier_models

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
    run, other = client.create_run(experiment), client.create_run(experiment)
    client.create_logged_model(experiment, name="model", source_run_id=run.info.run_id)  # PENDING: never finished
    kept = client.create_logged_model(experiment, name="model", source_run_id=other.info.run_id)
    assert drop_earlier_models(client, run.info.run_id) == 1
    assert not client.search_logged_models([experiment], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [m.model_id for m in client.search_logged_models([experiment])] == [kept.model_id]


def test_the_results_tune_recorded_are_read_whole_where_its_result_json_lost_lines(tmp_path):
    """A trial's results as Tune recorded them (what `resume` logs for epochs a dead driver held):
    from its result.json, and from its progress.csv for the epochs result.json lost on a restore;
    nested figures, which progress.csv flattens, only from result.json."""
    import csv
    from types import SimpleNamespace

    from search.tracking import recorded_results

    results = [{"epoch": e, "epochs": 3, "objective": 0.1 * e + 1 / 3, "loss": 2.0 - e, "seeds": {"0": e}}
               for e in (1, 2, 3)]
    (tmp_path / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results[2:]))  # epochs 1-2 lost
    with (tmp_path / "progress.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "epochs", "objective", "loss", "seeds/0"])
        writer.writeheader()
        for r in results:
            writer.writerow({**{k: v for k, v in r.items() if k != "seeds"}, "seeds/0": r["seeds"]["0"]})
    rows = recorded_results(SimpleNamespace(path=str(tmp_path), local_path=None))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["objective"] for r in rows] == [r["objective"] for r in results]  # exactly: repr reads back
    assert rows[2] == results[2] and "seeds/0" not in rows[0]
    assert recorded_results(SimpleNamespace(path=str(tmp_path / "none"), local_path=None)) == []
