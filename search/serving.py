"""MLflow models that take audio: one pyfunc flavour for a trial's model and for a fused system.

Both are the same :class:`AudioSceneModel`: an ensemble of ``asc.inference.Member`` files (one for a
trial, several for a fusion) and their weights, stored as the model's artifacts. Loaded with
``mlflow.pyfunc.load_model(uri)``, its ``predict`` takes a DataFrame of clips, as its signature
says: an ``audio`` column of encoded WAV / FLAC bytes (base64 in JSON for a model server) or a ``path``
column of files or folders, and an optional ``device`` column; it returns each scene's probability
and the ``label``, one row per clip, indexed by path. Each member computes its own features and enhancement from the
audio (see ``asc.inference``). The ``asc`` and ``search`` packages travel inside the model
(``code_paths``), so loading needs only the requirements installed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Sequence

import mlflow
import numpy as np
import pandas as pd
import soundfile
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, Schema

import asc
from asc.errors import AscError
from asc.inference import MEMBER_PACKAGES, Ensemble, Member, audio_paths

SPEC = "ensemble.json"


AUDIO, PATH, DEVICE, LABEL = "audio", "path", "device", "label"


def input_clips(model_input, folder: Path) -> tuple[list[str], list[str], list[str | None] | None]:
    """What a caller hands ``predict``, as (audio files to read, the names to report them by, each
    clip's device or None). Accepted: a path or folder, a list of them, or a pandas DataFrame with a
    ``path`` column (files on the model's machine) or an ``audio`` column (the encoded WAV / FLAC
    bytes of each clip; base64 in JSON, which MLflow's model server decodes by the signature), and an
    optional ``device`` column (a spectrum-corrected model needs it for clips whose name does not say
    it). Audio bytes are written into ``folder`` for reading."""
    if isinstance(model_input, pd.Series):
        model_input = model_input.to_frame(PATH if model_input.name != AUDIO else AUDIO)
    if not isinstance(model_input, pd.DataFrame):
        if isinstance(model_input, np.ndarray):
            model_input = model_input.ravel().tolist()
        paths = audio_paths(model_input)
        return paths, paths, None
    columns = list(model_input.columns)
    devices = None
    if DEVICE in columns:
        devices = [None if (d is None or (isinstance(d, float) and np.isnan(d)) or d == "") else str(d).lower()
                   for d in model_input[DEVICE].tolist()]
    if AUDIO in columns:
        names, paths = [], []
        for k, blob in enumerate(model_input[AUDIO].tolist()):
            if isinstance(blob, str):  # base64 text, when a caller sends it without the signature's decoding
                try:
                    blob = base64.b64decode(blob, validate=True)
                except (binascii.Error, ValueError):
                    raise AscError(f"audio model input: row {k} of column 'audio' is neither audio bytes nor "
                                   "base64 of them") from None
            if not isinstance(blob, (bytes, bytearray)) or not blob:
                raise AscError(f"audio model input: row {k} of column 'audio' holds no audio bytes")
            name = model_input[PATH].iloc[k] if PATH in columns and isinstance(model_input[PATH].iloc[k], str) \
                else f"clip{k}"
            target = folder / f"{k}-{Path(str(name)).name or 'clip'}"
            target.write_bytes(bytes(blob))
            paths.append(str(target))
            names.append(str(name))
        return paths, names, devices
    if PATH in columns or (len(columns) == 1 and columns[0] != DEVICE):  # a device alone names no clip
        values = model_input[PATH if PATH in columns else columns[0]].tolist()
        paths = audio_paths(values) if all(isinstance(v, str) for v in values) else None
        if paths is None:
            raise AscError(f"audio model input: column {PATH!r} must hold file paths")
        return paths, paths, devices
    # No column at all: what mlflow.pyfunc hands on from a list or a string, whose unnamed column the
    # signature check drops, as it drops every column the signature does not name.
    got = f"got {columns}" if columns else ("got none (MLflow's signature check drops the columns it does not name, "
                                            "and the unnamed one of a plain list or string)")
    raise AscError(f"audio model input: a DataFrame needs an {AUDIO!r} column (encoded audio bytes) or a {PATH!r} "
                   f"column (files), {got}")


SERVE_PATHS = "ASC_SERVE_PATHS"  # "1": a model server may read the files its clients name


def _over_http() -> bool:
    """Whether this process is MLflow's model server (``mlflow models serve``, its Docker image), whose
    clients should not read the server's files by naming them (a folder would list them, a missing file
    would say so): there, clips come as bytes unless the server is started with ``ASC_SERVE_PATHS=1``.
    MLflow has no public flag for it; its server's application module is loaded only there."""
    return "mlflow.pyfunc.scoring_server.app" in sys.modules and os.environ.get(SERVE_PATHS) != "1"


class AudioSceneModel(PythonModel):
    """Scene probabilities from audio (see the module docstring)."""

    # MLflow wraps a PythonModel's ``predict`` to validate inputs against its type hints, and warns
    # (bypassing the caller's warning filters) when it has none. This one takes paths or bytes in
    # several shapes (see input_clips) and checks them itself; MLflow's own opt-out for such models:
    _skip_type_hint_validation = True

    def load_context(self, context):
        spec = read_spec(context.artifacts["ensemble"])
        self.ensemble = Ensemble([Member.load(context.artifacts[name]) for name in spec["members"]], spec["weights"])

    def predict(self, context, model_input, params=None):
        """One row per clip: each scene's probability and the ``label``, indexed by the clip's path
        (or, for audio bytes, the ``path`` column's name, else ``clip<k>``)."""
        paths, names = [], []
        try:
            if _over_http() and not (isinstance(model_input, pd.DataFrame) and AUDIO in model_input.columns):
                named = isinstance(model_input, pd.DataFrame) and PATH in model_input.columns
                # MLflow's schema enforcement drops the columns the signature does not name
                got = (f"columns {', '.join(map(str, model_input.columns))}"
                       if isinstance(model_input, pd.DataFrame) and len(model_input.columns) else
                       f"none of the columns it takes: {AUDIO}, {PATH}, {DEVICE}")
                raise AscError(f"audio model input: no {AUDIO!r} column ({got}); send each clip's bytes in an "
                               f"{AUDIO!r} column" + (f" (this model server reads no files its clients name: start "
                                                       f"it with {SERVE_PATHS}=1 to let them)" if named else ""))
            with tempfile.TemporaryDirectory() as tmp:
                paths, names, devices = input_clips(model_input, Path(tmp))
                probs = self.ensemble.predict(paths, devices=devices)
        except AscError as exc:  # bad input: MLflow's model server answers it with HTTP 400 and this line
            message = str(exc)
            for path, name in zip(paths, names):  # a clip sent as bytes is named as the caller named it
                message = message.replace(path, name)
            raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE) from None
        for note in self.ensemble.notes:  # e.g. unseen devices scored without spectrum correction: said, in
            warnings.warn(note, stacklevel=2)  # the caller's warnings or the model server's log
        out = pd.DataFrame(probs, columns=self.ensemble.classes, index=pd.Index(names, name=PATH))
        out[LABEL] = [self.ensemble.classes[k] for k in probs.argmax(axis=1)]
        return out


def signature(classes: list[str]):
    """The model's input and output schema, for MLflow's UI and its model server: clips as ``audio``
    bytes or as ``path`` names, an optional ``device``; each scene's probability and the label."""
    inputs = Schema([ColSpec("binary", AUDIO, required=False), ColSpec("string", PATH, required=False),
                     ColSpec("string", DEVICE, required=False)])
    outputs = Schema([ColSpec("double", c) for c in classes] + [ColSpec("string", LABEL)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_audio_model(uri: str, run_id: str, member_files: Sequence[Path], weights: Sequence[float] | None = None,
                    metadata: dict | None = None, step: int = 0) -> str:
    """Log an :class:`AudioSceneModel` of ``member_files`` with ``weights`` under ``run_id``; returns the
    model's URI (``models:/<id>``). MLflow links the run's metrics at ``step`` to the model (its
    Models tab shows them): a trial's last epoch, a fusion's step 0."""
    weights = list(weights) if weights is not None else [1.0] * len(member_files)
    members = [Member.load(f) for f in member_files]
    names = [f"member{k}" for k in range(len(member_files))]
    description = {"members": names, "weights": [float(w) for w in weights], "classes": members[0].classes,
                   "sources": [m.source for m in members],
                   "features": [m.features.key() for m in members],
                   "enhancements": [m.enhancement.__dict__ for m in members]}
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / SPEC
        spec.write_text(json.dumps(description, indent=1, default=str))
        artifacts = {"ensemble": str(spec)}
        for name, file in zip(names, member_files):  # MLflow keeps the file names: make them the members'
            artifacts[name] = str(Path(tmp) / f"{name}.pt")
            shutil.copyfile(file, artifacts[name])
        with mlflow_uris(uri), mlflow.start_run(run_id=run_id, log_system_metrics=False):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(Path(__file__).with_name("audio_model.py")), artifacts=artifacts,
                code_paths=[os.path.dirname(asc.__file__), os.path.dirname(os.path.abspath(__file__))],
                metadata=json.loads(json.dumps({**(metadata or {}), **description}, default=str)),
                # stated, not inferred (inference imports and probes every package: slow), and pinned
                pip_requirements=model_requirements(members),
                signature=signature(members[0].classes),
                input_example=_input_example(members[0]), step=step)
    return info.model_uri


# What a served model imports, whatever its members: asc.inference (torch, numpy, scipy, librosa,
# soundfile) and this module (mlflow, pandas); an MSXception member also pretrainedmodels, which
# imports torchvision.
SERVING_PACKAGES = ("mlflow", "torch", "numpy", "scipy", "librosa", "soundfile", "pandas")
MSXCEPTION_PACKAGES = ("torchvision", "pretrainedmodels")


def model_requirements(members) -> list[str]:
    """The packages the members need, so that an environment MLflow builds from the model's own files
    can load it, pinned to the versions the members were trained with (each records them) when every
    member recorded the same versions of all it needs; else, all from one environment too, those
    installed here, where the model is logged (versions from two environments may not install
    together: torchvision pairs with one torch). This module's own packages: those installed here."""
    names = list(SERVING_PACKAGES) + (list(MSXCEPTION_PACKAGES) if any(
        m.model_config.name == "msxception" for m in members) else [])
    needed = [n for n in names if n in MEMBER_PACKAGES]
    records = {tuple(_release(m.packages.get(n)) for n in needed) for m in members}
    trained = dict(zip(needed, records.pop())) if len(records) == 1 and None not in next(iter(records)) else {}
    return [f"{name}=={trained.get(name) or _release(version(name))}" for name in names]


def _release(text: str | None) -> str | None:
    """A version without its local build tag (``2.5.1+cu124``: ``2.5.1``), which no package index has."""
    return None if text is None else text.split("+")[0]


def _input_example(member) -> pd.DataFrame:
    """One row as a model server takes it: a clip's encoded audio bytes and its name. The clip is
    silence of the length the model was trained on, so that MLflow's check of the example (it predicts
    it when the model is logged) passes as a real request would; named as a device-A clip, so that a
    spectrum-corrected member knows its device."""
    config = member.features
    frames = member.frames or 1
    # librosa's centred STFT gives 1 + samples // hop frames, one fewer where the last is dropped
    samples = (frames - 1 + int(config.drop_last_frame)) * config.hop_length
    buffer = io.BytesIO()  # FLAC: silence compresses to a few hundred bytes (a WAV of it is 100s of KB of base64)
    soundfile.write(buffer, np.zeros(max(samples, 1), np.float32), config.sample_rate, format="FLAC", subtype="PCM_16")
    return pd.DataFrame({PATH: ["audio/example-a.flac"], AUDIO: [buffer.getvalue()]})


def registry_uri(tracking_uri: str) -> str:
    """Where models are registered and ``models:/`` URIs resolve: ``MLFLOW_REGISTRY_URI`` when it is set
    (MLflow's own order), else the tracking store."""
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri


@contextlib.contextmanager
def mlflow_uris(tracking_uri: str):
    """MLflow's process-wide tracking and registry URIs set to ``tracking_uri``'s while the block runs,
    then put back as they were: ``models:/`` URIs, ``mlflow.register_model`` and ``pyfunc.log_model``
    resolve only through them, and a call into this package (from a notebook, a service) should leave
    its caller's MLflow settings, and the environment MLflow copies them into, as it found them."""
    # MLflow offers setters and getters only (a getter resolves the default, so it cannot say "unset"):
    # its two module globals are read to put back exactly what was there.
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = tracking_utils._tracking_uri, registry_utils._registry_uri
    environ = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri(tracking_uri))
    try:
        yield
    finally:
        if tracking_utils._tracking_uri != saved[0]:
            mlflow.set_tracking_uri(saved[0])
        registry_utils._registry_uri = saved[1]
        for key, value in environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_spec(path) -> dict:
    """A model's ``ensemble.json``: its members' names and weights; a damaged one is an AscError naming it."""
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise AscError(f"{path}: not readable JSON ({exc})") from None
    if not (isinstance(spec, dict) and isinstance(spec.get("members"), list) and isinstance(spec.get("weights"), list)):
        raise AscError(f"{path}: not an ensemble (members and weights)")
    return spec


def download_members(model_uri: str, folder: Path, tracking_uri: str) -> tuple[list[Path], list[float]]:
    """The member files and weights of a logged :class:`AudioSceneModel`, downloaded into ``folder``."""
    # models:/<model id> URIs resolve through the process's tracking URI, whatever one passes (MLflow's
    # ModelsArtifactRepository asks a client of the default store)
    with mlflow_uris(tracking_uri):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder)))
    spec_files = list(local.glob(f"artifacts/{SPEC}"))
    if not spec_files:
        raise AscError(f"{model_uri}: not an audio scene model of this project (no artifacts/{SPEC})")
    spec = read_spec(spec_files[0])
    return [local / "artifacts" / f"{name}.pt" for name in spec["members"]], list(spec["weights"])
