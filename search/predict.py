"""``python -m search predict MODEL_URI DATA_DIR --out FILE``: a submission file from any audio model.

``MODEL_URI`` is any model this project logs (``search.serving``): a trial's (``models:/<id>`` from the
run's ``model_uri`` tag, or ``runs:/<run id>/model``) or a registered fusion (``models:/NAME/VERSION``),
or a downloaded model folder. ``DATA_DIR`` is a labelled development folder (its evaluation split by
default) or an unlabelled set (``audio/0.wav ...``). On a labelled set the device table is printed too.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import yaml

from asc.dataset import read_dataset
from asc.device_table import device_table
from asc.errors import AscError
from asc.metrics import device_metrics
from asc.progress import progress as show_progress
from asc.submission import FORMATS, write_submission
from search.serving import AudioSceneModel, mlflow_uris
from search.tracking import check_tracking_uri


def load_audio_model(model_uri: str, mlflow_uri: str | None = None):
    """The :class:`search.serving.AudioSceneModel` behind ``model_uri`` (loaded through pyfunc)."""
    local = Path(model_uri)
    if local.exists():
        if local.is_dir() and not (local / "MLmodel").is_file():
            raise AscError(f"model {model_uri}: a folder without an MLmodel file, so not a logged model (give the "
                           "folder that holds MLmodel, or a models:/ or runs:/ URI)")
        model_uri = str(local.resolve())
        if local.is_dir():  # MLflow's own message for a damaged MLmodel does not name the file
            try:
                yaml.safe_load((local / "MLmodel").read_text())
            except (OSError, ValueError, yaml.YAMLError) as exc:
                reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                raise AscError(f"model {model_uri}: cannot load it ({local / 'MLmodel'}: does not read as YAML, "
                               f"{reason})") from None
    elif "://" not in model_uri and not model_uri.startswith(("models:", "runs:")):
        raise AscError(f"model {model_uri}: no such file or folder, and not a models:/ or runs:/ URI")
    elif mlflow_uri:
        check_tracking_uri(mlflow_uri, must_exist=True)
    tmp = None
    try:
        # into a folder of its own: given none, MLflow loads a local store's model in place and writes a
        # file into the store's folder (fails on a read-only shared store). The members are read into
        # memory as the model loads, so the copy goes when it has.
        with tempfile.TemporaryDirectory() as tmp, mlflow_uris(mlflow_uri) if mlflow_uri else contextlib.nullcontext():
            model = mlflow.pyfunc.load_model(model_uri, dst_path=tmp)
    except Exception as exc:  # MLflow raises its own and OS errors for a wrong URI
        first = (str(exc) or type(exc).__name__).splitlines()[0]
        if tmp is not None:  # a file of the model named where the user has it, not in the copy that is gone
            first = first.replace(str(Path(tmp, Path(model_uri).name)), model_uri) if local.exists() else \
                first.replace(f"{tmp}/", "")
        raise AscError(f"model {model_uri}: cannot load it ({first[:300]})") from None
    python_model = model.unwrap_python_model() if hasattr(model, "unwrap_python_model") else None
    if not isinstance(python_model, AudioSceneModel):
        raise AscError(f"model {model_uri}: not an audio scene model of this project (a trial's or a fusion's)")
    return python_model


def predict(model_uri: str, data_dir: str | Path, out: str | Path, fmt: str = "kaggle", split: str | None = None,
            mlflow_uri: str | None = None, progress: bool = True, device: str | None = None) -> dict:
    """Predict every clip of ``data_dir`` (of ``split`` on a labelled set: by default ``evaluate``) and
    write the submission. Returns {"file", "clips", "split", "metrics" (labelled sets), "seconds",
    "probs", "filenames"}."""
    if fmt not in FORMATS:
        raise AscError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise AscError(f"--out {out}: is a folder; give the submission file's path")
    if not out.parent.is_dir():
        raise AscError(f"--out {out}: no such folder {out.parent}")
    dataset = read_dataset(data_dir)
    notes = []
    if dataset.labeled:
        split = split or "evaluate"
    elif split not in (None, "all"):
        notes.append(f"--split {split}: {data_dir} is an unlabelled set, without splits; every clip is predicted")
    if dataset.labeled and split != "all":
        clips = dataset.split(split)
        if not clips:
            raise AscError(f"{data_dir}: no clips in the {split!r} split (use --split all for every clip)")
    else:
        split, clips = "all", list(dataset.clips)
    model = load_audio_model(model_uri, mlflow_uri)
    ensemble = model.ensemble
    if device is not None and all(m.corrections is None for m in ensemble.members):
        notes.append(f"--device {device}: no member of {model_uri} corrects spectra by device; it changes nothing")
    elif device is not None and all(c.device for c in clips):
        notes.append(f"--device {device}: every clip's file name says its device; it changes nothing")
    start = time.perf_counter()
    with show_progress(len(clips), "predict", "clip", progress) as bar:
        # ``device``: the recording device of the clips whose names do not say it (spectrum correction)
        probs = ensemble.predict([str(dataset.path(c)) for c in clips], devices=[c.device or device for c in clips],
                                 progress=bar.update)
    for note in notes + ensemble.notes:
        print(f"note: {note}")
    seconds = time.perf_counter() - start
    predicted = [ensemble.classes[k] for k in probs.argmax(axis=1)]
    write_submission([c.filename for c in clips], predicted, out, fmt)
    if fmt == "dcase" and out.suffix.lower() == ".csv":
        # dcase_util's default loader reads a .csv file's first line as its header (a .txt file's rows it
        # reads as they are); the format has none, so that loader loses the first clip and names no file.
        print(f"note: {out.name}: dcase_util's default loader misreads a .csv file in this format (it takes the "
              "first clip for a header and then finds no file names); read it with csv_header=False and "
              "fields=['filename', 'scene_label'] (as the 2019 baseline does), or name it .txt")
    result = {"file": str(out), "clips": len(clips), "split": split, "seconds": seconds, "probs": probs,
              "filenames": [c.filename for c in clips], "metrics": None}
    if dataset.labeled:
        lookup = {c: i for i, c in enumerate(ensemble.classes)}
        unknown = sorted({c.scene for c in clips} - set(lookup))
        if unknown:
            print(f"note: scenes the model does not know, counted as errors: {', '.join(unknown)}")
        labels = np.array([lookup.get(c.scene, -1) for c in clips])
        seen = sorted({c.device for c in dataset.clips if c.split == "train"}) or None  # unseen devices apart
        m = device_metrics(labels, probs.argmax(axis=1), [c.device for c in clips], len(ensemble.classes), seen=seen)
        result["metrics"] = {k: v for k, v in m.items() if isinstance(v, float)}
    return result


def format_prediction(result: dict, model_uri: str) -> str:
    lines = [f"{result['clips']} clips predicted in {result['seconds']:.1f} s by {model_uri}",
             f"submission: {result['file']}"]
    if result["metrics"] is not None:
        split = result["split"]
        lines += ["", device_table([(model_uri, None, {split: result["metrics"]})], [split], clip_se=(0,))]
    return "\n".join(lines)
