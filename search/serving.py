"""MLflow models that take audio: one pyfunc flavour for a trial's model and for a fused system.

Both are the same :class:`AudioSceneModel`: an ensemble of ``asc.inference.Member`` files (one for a
trial, several for a fusion) and their weights, stored as the model's artifacts. Loaded with
``mlflow.pyfunc.load_model(uri)``, its ``predict`` takes audio files (a path, a folder, a list of
them, or a DataFrame with a ``path`` column) and returns a DataFrame of scene probabilities, one
column per scene, indexed by path. Each member computes its own features and enhancement from the
audio (see ``asc.inference``). The ``asc`` and ``search`` packages travel inside the model
(``code_paths``), so loading needs only the requirements installed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from asc.errors import AscError

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # keep the module importable for its helpers
    PythonModel = object

SPEC = "ensemble.json"


def input_paths(model_input) -> list[str]:
    """Audio paths from what a caller hands ``predict``: a path or folder, a list of them, a pandas
    DataFrame (its ``path`` column, else its only column) or Series."""
    from asc.inference import audio_paths

    try:
        import pandas as pd
    except ImportError:  # pandas comes with MLflow
        pd = None
    if pd is not None and isinstance(model_input, pd.DataFrame):
        if "path" in model_input.columns:
            model_input = model_input["path"]
        elif len(model_input.columns) == 1:
            model_input = model_input.iloc[:, 0]
        else:
            raise AscError(f"audio model input: a DataFrame needs a 'path' column, got {list(model_input.columns)}")
    if pd is not None and isinstance(model_input, pd.Series):
        model_input = model_input.tolist()
    if isinstance(model_input, np.ndarray):
        model_input = model_input.ravel().tolist()
    return audio_paths(model_input)


class AudioSceneModel(PythonModel):
    """Scene probabilities from audio files (see the module docstring)."""

    # MLflow wraps a PythonModel's ``predict`` to validate inputs against its type hints, and warns
    # (bypassing the caller's warning filters) when it has none. This one takes paths in several
    # shapes (see input_paths) and checks them itself; MLflow's own opt-out for such models:
    _skip_type_hint_validation = True

    def load_context(self, context):
        from asc.inference import Ensemble, Member

        spec = json.loads(Path(context.artifacts["ensemble"]).read_text())
        self.ensemble = Ensemble([Member.load(context.artifacts[name]) for name in spec["members"]], spec["weights"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        paths = input_paths(model_input)
        probs = self.ensemble.predict(paths)
        return pd.DataFrame(probs, columns=self.ensemble.classes, index=pd.Index(paths, name="path"))


def log_audio_model(uri: str, run_id: str, member_files: Sequence[Path], weights: Sequence[float] | None = None,
                    registered_model_name: str | None = None, metadata: dict | None = None) -> str:
    """Log (and optionally register) an :class:`AudioSceneModel` of ``member_files`` with ``weights``
    under ``run_id``; returns the model's URI (``models:/<id>``)."""
    import mlflow
    import torch

    import asc
    from asc.inference import Member

    weights = list(weights) if weights is not None else [1.0] * len(member_files)
    members = [Member.load(f) for f in member_files]
    names = [f"member{k}" for k in range(len(member_files))]
    description = {"members": names, "weights": [float(w) for w in weights], "classes": members[0].classes,
                   "sources": [m.source for m in members],
                   "features": [m.features.key for m in members],
                   "enhancements": [m.enhancement.__dict__ for m in members]}
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / SPEC
        spec.write_text(json.dumps(description, indent=1, default=str))
        artifacts = {"ensemble": str(spec)}
        for name, file in zip(names, member_files):  # MLflow keeps the file names: make them the members'
            artifacts[name] = str(Path(tmp) / f"{name}.pt")
            shutil.copyfile(file, artifacts[name])
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(Path(__file__).with_name("audio_model.py")), artifacts=artifacts,
                code_paths=[os.path.dirname(asc.__file__), os.path.dirname(os.path.abspath(__file__))],
                registered_model_name=registered_model_name,
                metadata=json.loads(json.dumps({**(metadata or {}), **description}, default=str)),
                # stated, not inferred: inference would import and probe every package (slow)
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                                  "librosa", "soundfile", "scipy", "pandas", "numpy"])
    return info.model_uri


def download_members(model_uri: str, folder: Path, tracking_uri: str) -> tuple[list[Path], list[float]]:
    """The member files and weights of a logged :class:`AudioSceneModel`, downloaded into ``folder``."""
    import mlflow

    # models:/ URIs resolve through the process's tracking and registry URIs, whatever one passes
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder)))
    spec_files = list(local.glob(f"artifacts/{SPEC}"))
    if not spec_files:
        raise AscError(f"{model_uri}: not an audio scene model of this project (no artifacts/{SPEC})")
    spec = json.loads(spec_files[0].read_text())
    return [local / "artifacts" / f"{name}.pt" for name in spec["members"]], list(spec["weights"])
