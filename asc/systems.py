"""The paper's systems A1-A7 (selected by Metric A) and B1-B7 (Metric B), Tables 2 and 3, and SC.

Each is a partial training configuration: pretraining, global normalisation, mean subtraction,
median filter, mixup alpha and spectrum correction. ``system_config`` fills in the rest. SC is not
the paper's: A2 on spectrum-corrected features (the DCASE2019 Task 1B winner's enhancement, Kosmider
2019), selected by Metric A, for comparing the winner's direction with the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asc.enhance import Enhancement, composition
from asc.errors import AscError
from asc.device_table import MEAN_SE_WIDTH, WIDTH, head_cells, mean_se, row_cells
from asc.metrics import column_head, device_metrics


@dataclass(frozen=True)
class System:
    pretrained: bool
    enhancement: Enhancement  # normalisation and the composed enhancements (spectrum correction: the store's)
    mixup_alpha: float
    paper: tuple[float, float, float, float, float] | None  # the paper's A, B, C, B&C, gap (%) for comparison
    spectrum_correction: bool = False  # trains on a spectrum-corrected store

    # the enhancement's settings under the names the paper's tables use
    normalization = property(lambda self: self.enhancement.normalization)
    mean_subtraction = property(lambda self: self.enhancement.mean_subtraction)
    median_filter = property(lambda self: self.enhancement.median_filter)

    def composition(self) -> str:
        """Its enhancements as a search space names them (``median_filter``, ``dir+freq_mixstyle``)."""
        return composition(self.enhancement.names + (("spectrum_correction",) if self.spectrum_correction else ()))


_TABLE = {  # id: (pretrained, norm, mean sub, median filter, mixup alpha), Table 2 (A) / Table 3 (B) results
    "1": (False, "gmsvn", False, None, 0.0),
    "2": (True, "gmsvn", False, None, 0.0),
    "3": (True, "gms", True, None, 0.0),
    "4": (True, "gms", False, (7, 21), 0.0),
    "5": (True, "gmsvn", False, None, 0.3),
    "6": (True, "gms", True, None, 0.3),
    "7": (True, "gms", False, (7, 21), 0.3),
}
_PAPER = {
    "A1": (69.2, 45.7, 53.5, 49.6, 19.6), "A2": (76.4, 55.2, 62.2, 58.7, 17.7), "A3": (67.7, 65.2, 61.1, 63.1, 4.6),
    "A4": (71.8, 58.1, 59.3, 58.7, 13.1), "A5": (77.8, 60.6, 65.9, 63.2, 14.6), "A6": (71.4, 69.3, 66.9, 68.1, 3.3),
    "A7": (73.4, 60.6, 63.3, 61.9, 11.5),
    "B1": (68.8, 48.0, 54.4, 51.2, 17.6), "B2": (76.0, 56.5, 60.2, 58.3, 17.7), "B3": (67.8, 63.9, 61.5, 62.7, 5.1),
    "B4": (71.6, 59.6, 61.7, 60.6, 11.0), "B5": (76.7, 64.3, 67.0, 65.6, 11.1), "B6": (69.6, 67.2, 67.6, 67.4, 2.2),
    "B7": (74.0, 60.2, 65.6, 62.9, 11.1),
}


def _system(row: str, paper=None, spectrum_correction: bool = False, **enhancements) -> System:
    """A system from its row of _TABLE, with the enhancements of later years (``freq_mixstyle``, ``dir``)."""
    pretrained, normalization, mean_subtraction, median_filter, mixup_alpha = _TABLE[row]
    return System(pretrained, Enhancement(normalization, mean_subtraction=mean_subtraction,
                                              median_filter=median_filter, **enhancements),
                  mixup_alpha, paper, spectrum_correction)


PAPER_SYSTEMS: dict[str, System] = {sid: _system(sid[1], _PAPER[sid]) for sid in _PAPER}
# Beyond the paper, each on A2 (no enhancement of the paper's): SC, the 2019 winner's spectrum
# correction; and the device-generalisation methods of DCASE 2022-2023 at their published settings:
# Freq-MixStyle (p 0.4, alpha 0.4; Schmid et al. 2023), DIR (p 0.4, the MicIRP responses; Morocutti et
# al. 2023) and both together.
SYSTEMS: dict[str, System] = {
    **PAPER_SYSTEMS,
    "SC": _system("2", spectrum_correction=True),
    "FMS": _system("2", freq_mixstyle=(0.4, 0.4)),
    "DIR": _system("2", dir=(0.4, "micirp")),
    "DIRFMS": _system("2", freq_mixstyle=(0.4, 0.4), dir=(0.4, "micirp")),
}


def selection_metric(system_id: str) -> str:
    """B systems keep the epoch with the best Metric B, the others (A1-A7, SC, FMS, DIR) the best Metric A."""
    return "metric_b" if system_id.upper().startswith("B") else "metric_a"


def get_system(system_id: str) -> System:
    key = system_id.upper()
    if key not in SYSTEMS:
        raise AscError(f"unknown system {system_id!r}: choose one of {', '.join(SYSTEMS)}")
    return SYSTEMS[key]


def system_config(system_id: str, store: str, model_name: str = "msxception", weights: str | None = None,
                  allow_download: bool = False, **train_settings):
    """The ``TrainConfig`` of a paper system on ``store``: its enhancement, mixup and selection metric,
    MSXception pretrained where the paper's system is (the small CNN never is); ``train_settings``
    (epochs, seed, protocol, device, checkpoint_dir, ...) fill in the rest."""
    # late: torch; search.space and `python -m asc --help` read the systems without it
    from asc.models import ModelConfig
    from asc.train import TrainConfig

    system = get_system(system_id)
    model = ModelConfig(name=model_name, pretrained=system.pretrained and model_name == "msxception",
                        weights=weights, allow_download=allow_download)
    return TrainConfig(store=store, model=model,
                       enhancement=system.enhancement,
                       mixup_alpha=system.mixup_alpha, selection=selection_metric(system_id), **train_settings)


PAPER_KEYS = ("acc_a", "acc_b", "acc_c", "acc_bc", "device_gap")  # the figures of System.paper, in its order
UNSEEN_KEYS = ("acc_unseen", "unseen_gap")  # beside them where the set has devices unseen in training


PAPER_HEAD = head_cells([column_head(k) for k in PAPER_KEYS], 6)  # over paper_cells


def paper_cells(system: System) -> str:
    """The paper's figures of ``system`` (:data:`PAPER_KEYS`, %), six characters each, under
    :data:`PAPER_HEAD`; dashes for a system that is not the paper's."""
    return "".join(f"{v:>6.1f}" for v in system.paper) if system.paper else f"{'-':>6}" * len(PAPER_KEYS)


def format_comparison(rows) -> str:
    """``rows`` of (system id, System, train() result): the device table beside the paper's."""
    seeds = max((len(r.get("seeds", [])) for _, _, r in rows), default=0)
    # the devices unseen in training, where the set has them (the paper's had none): after the paper's
    keys = PAPER_KEYS + (UNSEEN_KEYS if any("acc_unseen" in r["test"] for _, _, r in rows) else ())
    # several seeds: means over seeds with their standard errors (train_seeds results), wider cells
    heads = [column_head(k) for k in keys]
    head = (f"{'system':<7}{head_cells(heads, MEAN_SE_WIDTH if seeds > 1 else WIDTH)}  |  paper (MSXception, "
            f"real data):{PAPER_HEAD}")
    lines = [head, "-" * len(head)]
    for sid, system, result in rows:
        t = result["test"]
        ours = "".join(mean_se(t.get(k), t.get(k + "_sem")) for k in keys) if seeds > 1 else row_cells(t, keys)
        paper = paper_cells(system)
        lines.append(f"{sid:<7}{ours}  |  {'':<30}{paper}")
    if seeds > 1:
        lines.append(f"ours: mean +- standard error over {seeds} seeds, evaluation split")
    return "\n".join(lines)


def parallel_mask(filenames, devices) -> np.ndarray:
    """Which clips belong to a segment that more than one device recorded (a parallel group): the same
    recordings on every device, where a device gap is the device's and not the recordings'."""
    stems = [str(f).rsplit("-", 1)[0] for f in filenames]  # audio/scene-city-location-segment
    groups: dict[str, set] = {}
    for stem, device in zip(stems, devices):
        groups.setdefault(stem, set()).add(str(device))
    return np.array([len(groups[s]) > 1 for s in stems])


def prediction_metrics(probs: np.ndarray, labels: np.ndarray, devices, filenames, seen=None) -> dict:
    """Device metrics of one set of predictions on all its clips and on its parallel groups alone.
    ``seen``: the training clips' devices (the others are reported as unseen)."""
    pred, devices = np.asarray(probs).argmax(axis=1), np.asarray(devices)
    n_classes = np.asarray(probs).shape[1]
    mask = parallel_mask(filenames, devices)
    out = {"all": device_metrics(labels, pred, devices, n_classes, seen=seen)}
    if mask.any():
        out["parallel"] = device_metrics(np.asarray(labels)[mask], pred[mask], devices[mask], n_classes, seen=seen)
    return {part: {k: v for k, v in m.items() if isinstance(v, float)} for part, m in out.items()}
