"""``predictions.parquet``: the one schema of the predictions a trial's run and a fusion's run log.

A row per clip: its ``split`` (``selection``: the clips the epoch and the fusion are chosen on;
``evaluation``: the evaluation split), ``filename``, ``device``, ``label`` (the true scene) and one
float32 probability column per class, ``p_<class>``. A several-seed trial's rows hold the seeds'
average there (the trial as one member) and each seed's own beside it as ``<seed>/p_<class>``
(``seed1/p_tram``), for fusion by seed. ``search.tracking`` writes a trial's, ``search.fuse`` a
fusion's, and reads the candidates' back.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from asc.errors import AscError

FILE = "predictions.parquet"
SPLITS = ("selection", "evaluation")


def predictions_table(classes: list[str], parts) -> pa.Table:
    """The table of ``parts``: (split, filenames, devices, labels, probabilities [clips, classes],
    {seed name: that seed's probabilities}, empty for one model) for each split."""
    tables = []
    for split, filenames, devices, labels, probs, per_seed in parts:
        columns = {"split": [split] * len(probs), "filename": filenames, "device": devices, "label": labels}
        columns.update({f"p_{c}": probs[:, k].astype(np.float32) for k, c in enumerate(classes)})
        for name, seed_probs in per_seed.items():
            columns.update({f"{name}/p_{c}": seed_probs[:, k].astype(np.float32) for k, c in enumerate(classes)})
        tables.append(pa.table(columns))
    return pa.concat_tables(tables)


def log_predictions(client, run_id: str, table: pa.Table) -> None:
    """``table`` as the run's ``predictions.parquet`` artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(table, Path(tmp) / FILE)
        client.log_artifact(run_id, str(Path(tmp) / FILE))


def read_predictions(path: Path, run_label: str):
    """A ``predictions.parquet`` file as (classes, {split: (filenames, devices, labels, probabilities)},
    {seed name: {split: probabilities}}), each split's rows in filename order."""
    try:
        table = pq.read_table(path).to_pandas()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise AscError(f"{run_label}: unreadable {FILE} ({type(exc).__name__})") from None
    classes = [c[2:] for c in table.columns if c.startswith("p_")]
    seeds = sorted({c.split("/")[0] for c in table.columns if "/p_" in c}, key=lambda n: int(n[4:]) if n[4:].isdigit() else 0)
    out, per_seed = {}, {}
    for split in SPLITS:
        part = table[table["split"] == split].sort_values("filename", kind="stable")
        if not len(part):
            continue
        out[split] = (part["filename"].to_numpy(str), part["device"].to_numpy(str), part["label"].to_numpy(str),
                      part[[f"p_{c}" for c in classes]].to_numpy(np.float64))
        for seed in seeds:
            per_seed.setdefault(seed, {})[split] = part[[f"{seed}/p_{c}" for c in classes]].to_numpy(np.float64)
    return classes, out, per_seed
