"""Fusion, registered audio models and submission files on a real smoke search's MLflow store:
`python -m search fuse` and `python -m search predict` as a user runs them, and the registered model
loaded back with ``mlflow.pyfunc.load_model`` predicting from audio what its members predicted from
the feature store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import predictions_artifact
from tests.helpers import ENV, REPO, mlflow_runs, run, search_cmd

NAME = "fusesearch"


@pytest.fixture(scope="module")
def searched(store, tmp_path_factory):  # noqa: F811
    """A finished smoke search (4 trials, ASHA) with its MLflow store."""
    storage = tmp_path_factory.mktemp("fuse") / "runs"
    done = run(search_cmd(store, storage, NAME))
    assert done.returncode == 0, done.stderr[-3000:]
    return {"storage": storage, "uri": f"sqlite:///{storage / 'mlflow.db'}", "store": store,
            "data": store.parent / "data"}


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "search", *args], timeout=timeout)


def predictions(client, run_id: str):
    """A run's predictions.parquet as {split: (filenames, devices, labels, probs)}, sorted by file."""
    table = predictions_artifact(client, run_id).to_pandas()
    classes = [c[2:] for c in table.columns if c.startswith("p_")]
    out = {}
    for split, part in table.groupby("split"):
        part = part.sort_values("filename")
        out[split] = (part["filename"].tolist(), part["device"].tolist(), part["label"].tolist(),
                      part[[f"p_{c}" for c in classes]].to_numpy(np.float64))
    return out, classes


def hand_metrics(probs, labels, devices, classes) -> dict:
    """Accuracy per device, B&C, gap, Metric A and B, by hand."""
    pred = np.array(classes)[probs.argmax(1)]
    right = pred == np.array(labels)
    devices = np.array(devices)
    acc = {d: right[devices == d].mean() for d in set(devices)}
    bc = right[devices != "a"].mean()
    return {"acc_a": acc["a"], "acc_bc": bc, "device_gap": acc["a"] - bc, "metric_a": right.mean(),
            "metric_b": (acc["a"] + bc) / 2}


def test_fuse_logs_and_registers_a_fusion_whose_figures_are_the_members_average(searched):
    done = cli("fuse", "--experiment", NAME, "--mlflow-uri", searched["uri"], "--method", "top", "--size", "2",
               "--register", "smoke-fusion", "--alias", "champion")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "top fusion by metric_b" in out and "selection clips (%)" in out and "evaluation clips (%)" in out
    assert "registered: models:/smoke-fusion@champion (version 1)" in out
    # MLflow's own lines (it registered, it validated an input example) are not on the console: ours say it
    assert "Successfully registered" not in done.stderr and "Validating input example" not in done.stderr, done.stderr
    client, experiment, parent, trials = mlflow_runs(searched["uri"], NAME)
    fusions = client.search_runs([experiment.experiment_id], filter_string="tags.role = 'fusion'")
    assert len(fusions) == 1
    # the fusions have a runs table of their own, which fuse prints the address of; the trials' holds
    # the trials alone (a fusion's objective, measured on the clips that chose it, would head it)
    assert f"#/experiments/{experiment.experiment_id}/runs?viewStateShareKey=fusions&" in out
    for key, role in (("fusions", "fusion"), ("trials", "trial")):
        view = json.loads(experiment.tags[f"mlflow.sharedViewState.{key}"])
        shown = client.search_runs([experiment.experiment_id], filter_string=view["searchFilter"])
        assert shown and {r.data.tags["role"] for r in shown} == {role}
        for column in view["selectedColumns"]:
            kind, name = column.split(".", 1)
            assert kind == "attributes" or any(name.strip("`") in getattr(r.data, kind) for r in shown), column
    assert {t.data.tags["state"] for t in trials} <= {"done 3/3", "ASHA@1/3", "ASHA@2/3"}
    fusion = fusions[0]
    assert fusion.info.status == "FINISHED"
    assert fusion.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
    member_ids = fusion.data.params["member_run_ids"].split(",")
    weights = [float(w) for w in fusion.data.params["weights"].split(",")]
    assert len(member_ids) == 2 and weights == [0.5, 0.5]
    assert set(member_ids) <= {t.info.run_id for t in trials}
    # The two members are the two best trials on the selection clips by Metric B.
    by_run = {t.info.run_id: predictions(client, t.info.run_id) for t in trials}
    own = {rid: hand_metrics(p["selection"][3], p["selection"][2], p["selection"][1], classes)["metric_b"]
           for rid, (p, classes) in by_run.items()}
    assert sorted(own[r] for r in member_ids) == sorted(own.values())[-2:]
    # Its figures are those of the members' averaged probabilities, computed by hand.
    (first, classes) = by_run[member_ids[0]]
    for split, prefix in (("selection", "sel_"), ("evaluation", "eval_")):
        fused = np.mean([by_run[r][0][split][3] for r in member_ids], axis=0)
        expected = hand_metrics(fused, first[split][2], first[split][1], classes)
        for key, value in expected.items():
            assert fusion.data.metrics[prefix + key] == pytest.approx(value), (split, key)
    artifacts = {a.path for a in client.list_artifacts(fusion.info.run_id)}
    assert {"predictions.parquet", "confusion_selection.png", "confusion_evaluation.png", "acc_bc_vs_gap.png",
            "fusion.txt", "fusion.json"} <= artifacts
    versions = client.search_model_versions("name = 'smoke-fusion'")
    assert [str(v.version) for v in versions] == ["1"]
    # what a person lands on in the UI: the score first, in percent, with the clips' standard error
    mb = f"{100 * fusion.data.metrics['sel_metric_b']:.1f} ± {100 * fusion.data.metrics['sel_metric_b_cse']:.1f}"
    headline = f"Metric B {mb} % on the selection clips that chose it"
    assert versions[0].description.startswith(headline)
    # and every figure the clips chose on, each with its standard error from them
    a = f"A {100 * fusion.data.metrics['sel_acc_a']:.1f} ± {100 * fusion.data.metrics['sel_acc_a_cse']:.1f}"
    gap = f"gap {100 * fusion.data.metrics['sel_device_gap']:.1f} ± {100 * fusion.data.metrics['sel_device_gap_cse']:.1f}"
    assert f"The selection clips (%, the gap in points, ± one standard error from the clips): {a}, B " in \
        versions[0].description and gap in versions[0].description
    # by Metric B, its objective and that objective's clip standard error are those figures (the runs view's columns)
    assert fusion.data.metrics["objective"] == fusion.data.metrics["sel_metric_b"]
    assert fusion.data.metrics["objective_cse"] == pytest.approx(fusion.data.metrics["sel_metric_b_cse"])
    note = fusion.data.tags["mlflow.note.content"]
    assert note.startswith(headline) and note.count("\n| t0") == 2 and "| 0.50 |" in note
    assert "audio bytes" in client.get_registered_model("smoke-fusion").description
    trial_notes = [t.data.tags.get("mlflow.note.content", "") for t in trials]
    assert all(n.startswith(("Ran ", "Diverged")) for n in trial_notes), trial_notes
    for t, n in zip(trials, trial_notes):
        m = t.data.metrics
        assert (f"chosen on the selection clips (%, the gap in points, ± one standard error from the clips): A "
                f"{100 * m['sel_acc_a']:.1f} ± {100 * m['sel_acc_a_cse']:.1f}, B ") in n, n
        assert f"Metric B {100 * m['sel_metric_b']:.1f} ± {100 * m['sel_metric_b_cse']:.1f}" in n, n
    searched["members"] = member_ids


def test_registered_model_predicts_from_audio_what_its_members_averaged_from_the_store(searched, tmp_path):
    import mlflow

    if "members" not in searched:
        pytest.skip("needs the fusion of the test before")
    client, *_ = mlflow_runs(searched["uri"], NAME)
    mlflow.set_tracking_uri(searched["uri"])
    mlflow.set_registry_uri(searched["uri"])
    model = mlflow.pyfunc.load_model("models:/smoke-fusion/1")
    (preds, classes) = predictions(client, searched["members"][0])
    files = preds["evaluation"][0]
    expected = np.mean([predictions(client, r)[0]["evaluation"][3] for r in searched["members"]], axis=0)
    import pandas as pd

    got = model.predict(pd.DataFrame({"path": [str(searched["data"] / f) for f in files]}))
    assert list(got.columns) == classes + ["label"] and len(got) == len(files)
    np.testing.assert_allclose(got[classes].to_numpy(), expected, atol=1e-5)
    assert got["label"].tolist() == [classes[k] for k in expected.argmax(axis=1)]
    # A folder in the path column stands for its .wav files; the clips' encoded bytes work too (what a
    # model server is sent).
    one = model.predict(pd.DataFrame({"path": [str(searched["data"] / files[0])]}))
    np.testing.assert_allclose(one[classes].to_numpy()[0], expected[0], atol=1e-5)
    folder = tmp_path / "two"
    folder.mkdir()
    for f in files[:2]:
        shutil.copy(searched["data"] / f, folder / Path(f).name)
    both = model.predict(pd.DataFrame({"path": [str(folder)]}))
    order = [[Path(f).name for f in files[:2]].index(Path(p).name) for p in both.index]
    assert sorted(order) == [0, 1]
    np.testing.assert_allclose(both[classes].to_numpy(), expected[order], atol=1e-5)
    # A plain list reaches the model without its column (MLflow's signature check drops it): refused
    # in one line that says so.
    with pytest.raises(mlflow.exceptions.MlflowException, match="the unnamed one of a plain list or string"):
        model.predict([str(searched["data"] / files[0])])
    with pytest.raises(mlflow.exceptions.MlflowException, match="needs an 'audio' column .* got \\['device'\\]"):
        model.predict(pd.DataFrame({"device": ["b"]}))  # a device names no clip
    sent = model.predict(pd.DataFrame({"audio": [(searched["data"] / f).read_bytes() for f in files[:2]],
                                       "path": files[:2]}))
    assert sent.index.tolist() == files[:2]
    np.testing.assert_allclose(sent[classes].to_numpy(), expected[:2], atol=1e-5)
    # Loaded through this package from another store than the process's: found there, and the caller's
    # MLflow settings (and the environment MLflow copies them into) are left as they were.
    import os

    from search.predict import load_audio_model

    other = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow.set_tracking_uri(other)
    mlflow.set_registry_uri(other)
    os.environ.pop("MLFLOW_REGISTRY_URI")  # which MLflow's setter wrote, and which would be where models:/ look
    loaded = load_audio_model("models:/smoke-fusion/1", searched["uri"])
    assert len(loaded.ensemble.members) == len(searched["members"])
    assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == os.environ["MLFLOW_TRACKING_URI"] == other
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    mlflow.set_tracking_uri(searched["uri"])
    mlflow.set_registry_uri(searched["uri"])
    info = mlflow.models.get_model_info("models:/smoke-fusion/1")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["audio", "path", "device"]
    assert info.signature.outputs.input_names()[-1] == "label"
    # The input example shown in the UI (and checked by MLflow when the model is logged) is a request
    # the model answers: a clip of the length it was trained on.
    local = mlflow.artifacts.download_artifacts("models:/smoke-fusion/1", dst_path=str(tmp_path / "model"))
    example = mlflow.models.Model.load(local).load_input_example(local)
    answer = model.predict(example)
    assert answer.index.tolist() == ["audio/example-a.flac"] and answer["label"].iloc[0] in classes
    assert (Path(local) / "input_example.json").stat().st_size < 10_000  # readable in the UI: FLAC of silence
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=r"row 0 of column 'audio' holds no audio bytes"):
        model.predict(pd.DataFrame({"audio": [b""]}))


def test_a_model_server_answers_audio_bytes_as_predict_does(searched, tmp_path):
    """`mlflow models serve` for the registered fusion (by its alias) on loopback: two clips posted as
    base64 bytes in JSON, the answer equal to `predict` on the same files; bytes that are not audio are
    HTTP 400 with one line."""
    import base64
    import json
    import os
    import signal
    import urllib.error
    import urllib.request

    import pandas as pd

    from tests.helpers import free_port, wait_http

    if "members" not in searched:
        pytest.skip("needs the fusion of the test before")
    files = sorted(p.relative_to(searched["data"]).as_posix() for p in (searched["data"] / "audio").glob("*-b.wav"))[:2]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/smoke-fusion@champion",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=REPO, env={**ENV, "MLFLOW_TRACKING_URI": searched["uri"]},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 300)

        def post(rows):
            body = json.dumps({"dataframe_split": {"columns": ["audio", "path"], "data": rows}}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())

        answer = post([[base64.b64encode((searched["data"] / f).read_bytes()).decode(), f] for f in files])
        rows = answer["predictions"]
        out = tmp_path / "sub.csv"
        done = cli("predict", "models:/smoke-fusion@champion", str(searched["data"]), "--split", "all", "--out", str(out),
                   "--mlflow-uri", searched["uri"])
        assert done.returncode == 0, done.stderr[-3000:]
        written = pd.read_csv(out)  # the submission `predict` wrote: the same label for each posted clip
        by_id = dict(zip(written.iloc[:, 0].astype(str), written.iloc[:, 1]))
        assert [by_id[Path(f).stem] for f in files] == [r["label"] for r in rows], (by_id, rows)
        import mlflow

        mlflow.set_tracking_uri(searched["uri"])
        mlflow.set_registry_uri(searched["uri"])
        local = mlflow.pyfunc.load_model("models:/smoke-fusion@champion").predict(
            pd.DataFrame({"path": [str(searched["data"] / f) for f in files]}))
        classes = [c for c in local.columns if c != "label"]
        np.testing.assert_allclose([[r[c] for c in classes] for r in rows], local[classes].to_numpy(), atol=1e-5)
        assert [r["label"] for r in rows] == local["label"].tolist()
        with pytest.raises(urllib.error.HTTPError) as refused:
            post([[base64.b64encode(b"RIFF not really a wave file").decode(), "bad-b.wav"]])
        assert refused.value.code == 400
        message = json.loads(refused.value.read())["message"]  # MLflow's "Failed to predict ...", then ours
        assert message.strip().splitlines()[-1].startswith("Error: bad-b.wav: not a readable audio file"), message
        import io

        import soundfile as sf

        y, rate = sf.read(searched["data"] / files[0])
        other = io.BytesIO()  # the same clip at another sample rate than the model's
        sf.write(other, y[::2], rate // 2, format="WAV")
        with pytest.raises(urllib.error.HTTPError) as resampled:
            post([[base64.b64encode(other.getvalue()).decode(), "half-b.wav"]])
        assert resampled.value.code == 400
        message = json.loads(resampled.value.read())["message"].strip().splitlines()[-1]
        assert message.startswith(f"Error: half-b.wav: sample rate {rate // 2} Hz, expected {rate}"), message
        with pytest.raises(urllib.error.HTTPError) as named:  # the server's own files are not its clients' to read
            body = json.dumps({"dataframe_split": {"columns": ["path"], "data": [[str(searched["data"] / "audio")]]}})
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                                          headers={"Content-Type": "application/json"}), timeout=120)
        assert named.value.code == 400
        message = json.loads(named.value.read())["message"].strip().splitlines()[-1]
        assert "no 'audio' column (columns path)" in message and "reads no files its clients name" in message
        assert "ASC_SERVE_PATHS=1" in message
        with pytest.raises(urllib.error.HTTPError) as wrong:  # a misnamed column is named as such
            body = json.dumps({"dataframe_split": {"columns": ["wav"], "data": [["x"]]}})
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                                          headers={"Content-Type": "application/json"}), timeout=120)
        assert wrong.value.code == 400
        message = json.loads(wrong.value.read())["message"].strip().splitlines()[-1]
        assert "no 'audio' column (none of the columns it takes: audio, path, device)" in message, message
        assert "files" not in message, message
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)


def test_a_registry_apart_from_the_tracking_store_is_where_fuse_registers_and_predict_looks(searched, tmp_path):
    """`MLFLOW_REGISTRY_URI`, as MLflow itself reads it: the fusion's model version and alias go to that
    registry, and `predict models:/NAME@ALIAS` finds them there."""
    from mlflow import MlflowClient

    if "members" not in searched:
        pytest.skip("needs the fusion of the test before")
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    env = {**ENV, "MLFLOW_REGISTRY_URI": registry}
    done = run([sys.executable, "-m", "search", "fuse", "--experiment", NAME, "--mlflow-uri", searched["uri"],
                "--method", "top", "--size", "1", "--register", "apart", "--alias", "champion"], env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    apart = MlflowClient(searched["uri"], registry_uri=registry).get_model_version_by_alias("apart", "champion")
    assert int(apart.version) == 1
    assert not MlflowClient(searched["uri"]).search_registered_models(filter_string="name = 'apart'")
    out = tmp_path / "sub.csv"
    done = run([sys.executable, "-m", "search", "predict", "models:/apart@champion", str(searched["data"]), "--out",
                str(out), "--mlflow-uri", searched["uri"]], env=env, timeout=300)
    assert done.returncode == 0 and out.is_file(), done.stderr[-3000:]


def test_predict_writes_both_formats_overwrites_and_names_a_bad_clip(searched, tmp_path):
    if "members" not in searched:
        pytest.skip("needs the fusion of the test before")
    out = tmp_path / "sub.csv"
    out.write_text("stale content that must go\n" * 1000)
    store = {f: f.stat().st_mtime_ns for f in (searched["storage"] / "mlartifacts").rglob("*")}
    done = cli("predict", "models:/smoke-fusion/1", str(searched["data"]), "--out", str(out),
               "--mlflow-uri", searched["uri"])
    assert done.returncode == 0, done.stderr[-3000:]
    # reading a model writes nothing into the store (a shared one may be read-only)
    assert {f: f.stat().st_mtime_ns for f in (searched["storage"] / "mlartifacts").rglob("*")} == store
    lines = out.read_text().splitlines()
    assert lines[0] == "Id,Scene_label" and "stale" not in out.read_text()
    evaluate = [line.split("\t")[0] for line in (searched["data"] / "evaluation_setup" / "fold1_evaluate.csv")
                .read_text().splitlines()[1:] if line.strip()]
    assert [line.split(",")[0] for line in lines[1:]] == [Path(f).stem for f in evaluate]
    assert "evaluate clips (%)" in done.stdout and "MB" in done.stdout  # labelled: the device table
    # DCASE format, and a trial's own model (runs:/ URI) on an unlabelled set (audio/0.wav ...).
    unlabeled = tmp_path / "leaderboard" / "audio"
    unlabeled.mkdir(parents=True)
    for i, f in enumerate(evaluate[:3]):
        shutil.copy(searched["data"] / f, unlabeled / f"{i}.wav")
    trial = searched["members"][0]
    done = cli("predict", f"runs:/{trial}/model", str(unlabeled.parent), "--out", str(out), "--format", "dcase",
               "--mlflow-uri", searched["uri"])
    assert done.returncode == 0, done.stderr[-3000:]
    lines = out.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [f"audio/{i}.wav" for i in range(3)]  # no header line
    # What predict wrote, read by the challenge's own tools: the 2019 baseline's way whatever the name,
    # dcase_util's default loader as a .txt (a .csv's first line it takes for a header, which predict notes).
    import dcase_util

    assert "dcase_util's default loader misreads a .csv file in this format" in done.stdout
    baseline = {"fields": ["filename", "scene_label"], "csv_header": False, "delimiter": "\t"}
    txt = tmp_path / "sub.txt"
    done = cli("predict", f"runs:/{trial}/model", str(unlabeled.parent), "--out", str(txt), "--format", "dcase",
               "--mlflow-uri", searched["uri"], "--split", "train", "--device", "b")
    assert done.returncode == 0 and "header" not in done.stdout and txt.read_text() == out.read_text()
    # options that change nothing here say so: no splits in an unlabelled set, no spectrum correction
    assert f"note: --split train: {unlabeled.parent} is an unlabelled set, without splits" in done.stdout
    assert f"note: --device b: no member of runs:/{trial}/model corrects spectra by device" in done.stdout
    for path, kwargs in ((out, baseline), (txt, baseline), (txt, {})):
        items = dcase_util.containers.MetaDataContainer().load(str(path), **kwargs)
        assert [(item.filename, item.scene_label) for item in items] == [tuple(x.split("\t")) for x in lines], kwargs
    assert "clips (%)" not in done.stdout  # no labels, no device table
    # A clip the model cannot read: one line naming it, and the previous file is left as it was.
    before = out.read_text()
    (unlabeled / "1.wav").write_bytes(b"RIFF not really a wave file")
    done = cli("predict", f"runs:/{trial}/model", str(unlabeled.parent), "--out", str(out),
               "--mlflow-uri", searched["uri"])
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "1.wav" in done.stderr
    assert out.read_text() == before
    # A float clip near 1e30 reads, but its features overflow: named, not predicted as argmax(NaN).
    import soundfile

    y, rate = soundfile.read(searched["data"] / evaluate[0], dtype="float32")
    soundfile.write(unlabeled / "1.wav", y * np.float32(1e30), rate, subtype="FLOAT")
    done = cli("predict", f"runs:/{trial}/model", str(unlabeled.parent), "--out", str(out),
               "--mlflow-uri", searched["uri"])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "1.wav: its log-Mel features are not finite" in done.stderr and out.read_text() == before


def test_a_damaged_model_folder_is_one_line_naming_the_users_file(searched, tmp_path, capsys):
    """A model folder (as `mlflow artifacts download` leaves it) with one file damaged: the line names
    that file where the user has it, not in the copy predict loads from, and no submission is written."""
    import mlflow

    import search.__main__

    _, _, _, trials = mlflow_runs(searched["uri"], NAME)
    mlflow.set_tracking_uri(searched["uri"])  # models:/m-... of MLflow 3's logged models: resolved by the tracking store
    whole = Path(mlflow.artifacts.download_artifacts(trials[0].data.tags["model_uri"], dst_path=str(tmp_path / "whole")))
    member = next(f.name for f in (whole / "artifacts").glob("*.pt"))
    for damaged, why in ((f"artifacts/{member}", "not a readable model member"),
                         ("artifacts/ensemble.json", "not readable JSON"), ("MLmodel", "does not read as YAML")):
        model = tmp_path / damaged.replace("/", "-")
        shutil.copytree(whole, model)
        (model / damaged).write_text("{[ damaged")
        status = search.__main__.main(["predict", str(model), str(searched["data"]), "--out", str(tmp_path / "o.csv")])
        err = capsys.readouterr().err
        assert status == 2 and len(err.splitlines()) == 1 and f"{model / damaged}: {why}" in err, err
    assert not (tmp_path / "o.csv").exists()


def test_fuse_refuses_runs_whose_predictions_cover_other_clips_and_bad_options(searched, tmp_path, capsys):
    import pyarrow.parquet as pq

    import search.__main__

    client, experiment, parent, trials = mlflow_runs(searched["uri"], NAME)
    # A run of the search whose predictions miss a clip (another split, another dataset).
    source = trials[0]
    table = predictions_artifact(client, source.info.run_id)
    stray = client.create_run(experiment.experiment_id, run_name="t099 other clips",
                              tags={"role": "trial", "mlflow.parentRunId": parent[0].info.run_id})
    pq.write_table(table.slice(1), tmp_path / "predictions.parquet")
    client.log_artifact(stray.info.run_id, str(tmp_path / "predictions.parquet"))
    client.set_terminated(stray.info.run_id, "FINISHED")
    runs = len(client.search_runs([experiment.experiment_id]))
    versions = len(client.search_model_versions())
    status = search.__main__.main(["fuse", "--experiment", NAME, "--mlflow-uri", searched["uri"]])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert f"experiment {NAME!r}: 1 run(s) predicted other clips" in err and f"t099 ({stray.info.run_id})" in err
    assert f"`MLFLOW_TRACKING_URI={searched['uri']} mlflow runs delete --run-id ID` for each" in err
    assert len(client.search_runs([experiment.experiment_id])) == runs  # nothing written
    # set aside as the line says (MLflow's soft delete), the rest fuse
    client.delete_run(stray.info.run_id)
    done = cli("fuse", "--experiment", NAME, "--mlflow-uri", searched["uri"], "--method", "per-enhancement")
    assert done.returncode == 0 and "t099" not in done.stdout, done.stderr[-3000:]
    runs = len(client.search_runs([experiment.experiment_id]))
    # names MLflow's registry refuses are refused before the fusion run and its model are written (in
    # this process: the command's own main, as the shell runs it, without a Python start per case)
    for args, culprit in ((["--by", "pareto"], "--by"), (["--size", "0"], "--size"), (["--size", "101"], "--size: 101 is out of range (must be 1 to 100)"),
                          (["--experiment", "nope"], "nope"), (["--register", "a/b"], "--register 'a/b'"),
                          (["--register", " "], "--register"), (["--alias", "champion"], "--register NAME"),
                          (["--register", "smoke-fusion", "--alias", "v2"], "--alias 'v2'"),
                          (["--register", "smoke-fusion", "--alias", "x" * 300], "--alias"),
                          (["--bags", "1001"], "--bags"), (["--method", "top", "--bags", "5"], "--bags 5"),
                          (["--method", "top", "--size", "99"], "--size 99"),
                          (["--method", "per-enhancement", "--size", "2"], "--size 2"),
                          (["--gap-lambda", "0.5"], "--gap-lambda 0.5: only --by gap_penalized")):
        try:
            status = search.__main__.main(["fuse", "--experiment", NAME, "--mlflow-uri", searched["uri"], *args])
        except SystemExit as stop:  # argparse's own refusals
            status = stop.code
        err = capsys.readouterr().err
        assert status != 0 and "Traceback" not in err, args
        assert len(err.strip().splitlines()) == 1 and culprit in err, err
    assert len(client.search_runs([experiment.experiment_id])) == runs
    assert len(client.search_model_versions()) == versions


def test_bench_fusion_draws_searches_from_the_recorded_trials_and_prints_every_method(searched, tmp_path):
    """bench-fusion end to end on the search's MLflow store: every method at the asked size, the goals,
    the JSON; a size the evaluation split cannot hold is one line naming it."""
    out = tmp_path / "fusion.json"
    done = cli("bench-fusion", "--experiment", NAME, "--mlflow-uri", searched["uri"], "--sizes", "4", "--trials", "2",
               "--draws", "3", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    for method in ("bootstrap (default)", "greedy", "greedy, 20 bags", "gated", "top 3", "per enhancement"):
        assert method in done.stdout
    assert "20 A, 10 B, 10 C clips" in done.stdout and "goals:" in done.stdout
    figures = json.loads(out.read_text())
    assert {r["n_bc"] for r in figures["rows"]} == {4} and len(figures["goals"]) == 2
    bad = cli("bench-fusion", "--experiment", NAME, "--mlflow-uri", searched["uri"], "--sizes", "12")
    assert bad.returncode != 0 and "--sizes 12" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_fuse_takes_the_training_devices_from_the_store_else_the_search_and_refuses_selections_without_b_or_c(tmp_path):
    """Protocol paper chooses on the evaluation split, which holds devices training never heard (s1).
    Metric B pools B and C only: the devices come from the store, else the search's experiment tag;
    with neither, fuse refuses in one line rather than count s1 as seen. Selection clips without C, or
    without B and C, are refused by Metric B in one line with their counts, before anything is written."""
    from mlflow import MlflowClient

    from asc.errors import AscError
    from search.fuse import fuse, load_candidates
    from search.predictions import log_predictions, predictions_table
    from search.tracking import SELECTED_ON_TAG, TRAIN_DEVICES_TAG

    rng = np.random.default_rng(0)
    devices = np.array(["a"] * 12 + ["b"] * 4 + ["c"] * 4 + ["s1"] * 4)
    files = [f"audio/x{k:02d}-{d}.wav" for k, d in enumerate(devices)]
    labels = rng.choice(["park", "tram"], len(devices))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def experiment(name: str, tags: dict, keep=np.ones(len(devices), bool)) -> str:
        eid = client.create_experiment(name, artifact_location=(tmp_path / name).as_uri(), tags=tags)
        for k in range(2):
            run = client.create_run(eid, run_name=f"t00{k} none", tags={"role": "trial"})
            client.log_param(run.info.run_id, "store", str(tmp_path / "gone"))  # not readable here
            probs = rng.dirichlet([1, 1], int(keep.sum()))
            log_predictions(client, run.info.run_id, predictions_table(
                ["park", "tram"], [("selection", [f for f, k in zip(files, keep) if k], devices[keep].tolist(),
                                    labels[keep].tolist(), probs, {})]))
            client.set_terminated(run.info.run_id, "FINISHED")
        return eid

    tagged = experiment("tagged", {SELECTED_ON_TAG: "evaluation", TRAIN_DEVICES_TAG: "a,b,c"})
    _, clips, *_ = load_candidates(client, tagged)
    assert tuple(clips["selection"].seen) == ("a", "b", "c")
    # selection clips of device A alone: Metric B is undefined there, and fuse says so before writing
    only_a = experiment("only-a", {SELECTED_ON_TAG: "validation", TRAIN_DEVICES_TAG: "a,b,c"}, devices == "a")
    before = len(client.search_runs([only_a]))
    with pytest.raises(AscError) as undefined:
        fuse("only-a", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "A 12" in str(undefined.value) and "--by metric_a" in str(undefined.value), undefined.value
    assert "\n" not in str(undefined.value) and len(client.search_runs([only_a])) == before
    no_c = experiment("no-c", {SELECTED_ON_TAG: "validation", TRAIN_DEVICES_TAG: "a,b,c"}, devices != "c")
    with pytest.raises(AscError, match="metric_b pools devices B, C .* hold none of device C") as pooled:
        fuse("no-c", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "\n" not in str(pooled.value) and len(client.search_runs([no_c])) == 2
    untagged = experiment("untagged", {SELECTED_ON_TAG: "evaluation"})
    with pytest.raises(AscError, match=rf"protocol paper.*{TRAIN_DEVICES_TAG}") as refused:
        load_candidates(client, untagged)
    assert "\n" not in str(refused.value)
