"""A logged MSXception model works away from this repository: a fresh virtual environment built from
the model's own requirements.txt alone loads it and predicts from audio (files and their bytes) what
it predicts here.

It installs torch, torchvision, MLflow and librosa into a new environment (about 3.5 minutes and
6.4 GB on the 2-core AMD EPYC this was measured on), so it is not in the default suite: ``.ci/run``
runs it after the suite with ``python -m pytest -m venv --runvenv``.
"""

from __future__ import annotations

import json
import subprocess
import venv

import numpy as np
import pytest

pytestmark = pytest.mark.venv


def test_an_msxception_model_loads_and_predicts_in_an_environment_from_its_own_requirements(
        synth_set, fast_config, tmp_path):
    import mlflow
    import pandas as pd

    from asc.dataset import read_development
    from asc.enhance import Enhancement
    from asc.inference import member_from_checkpoint
    from asc.models import ModelConfig
    from asc.store import build_stores
    from asc.train import TrainConfig, train
    from search.serving import log_audio_model

    store = build_stores(read_development(synth_set), [fast_config], tmp_path / "store").built[0]
    config = TrainConfig(store=store, model=ModelConfig(name="msxception", pretrained=False), epochs=1,
                         batch_size=8, enhancement=Enhancement("gmsvn"), checkpoint_dir=str(tmp_path / "ckpt"))
    train(config)
    member = member_from_checkpoint(tmp_path / "ckpt" / "best.pt").save(tmp_path / "member.pt")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("env", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = mlflow.MlflowClient().create_run(experiment).info.run_id
    model_uri = log_audio_model(uri, run_id, [member])
    folder = tmp_path / "model"
    mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder))
    requirements = (folder / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} >= {"mlflow", "torch", "torchvision", "pretrainedmodels",
                                                       "librosa", "soundfile", "scipy", "numpy", "pandas"}
    assert all("==" in r for r in requirements if not r.startswith("-"))

    clips = sorted(str(p) for p in (synth_set / "audio").glob("*-b.wav"))[:2]
    here = mlflow.pyfunc.load_model(str(folder)).predict(pd.DataFrame({"path": clips}))
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(folder / "requirements.txt")],
                             capture_output=True, text=True, timeout=3000)
    assert install.returncode == 0, install.stderr[-3000:]
    script = ("import json, pathlib, sys, mlflow, pandas as pd\n"  # from paths, and from the clips' bytes
              "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
              "for rows in ({'path': sys.argv[2:]}, {'audio': [pathlib.Path(p).read_bytes() for p in sys.argv[2:]]}):\n"
              "    print(json.dumps(m.predict(pd.DataFrame(rows)).reset_index().to_dict('list')))\n")
    away = subprocess.run([str(python), "-c", script, str(folder), *clips], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                                       "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert away.returncode == 0, away.stderr[-3000:]
    classes = [c for c in here.columns if c != "label"]
    for there in (json.loads(line) for line in away.stdout.strip().splitlines()[-2:]):
        np.testing.assert_allclose(np.array([there[c] for c in classes]).T, here[classes].to_numpy(), atol=1e-5)
        assert there["label"] == here["label"].tolist()
