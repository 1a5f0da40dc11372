"""The paper's systems A1-A7 (selected by Metric A) and B1-B7 (Metric B), Tables 2 and 3.

Each is a partial training configuration: pretraining, global normalisation, mean subtraction,
median filter and mixup alpha. ``system_config`` fills in the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from asc.errors import AscError


@dataclass(frozen=True)
class System:
    pretrained: bool
    normalization: str  # "gmsvn" or "gms"
    mean_subtraction: bool
    median_filter: tuple[int, int] | None
    mixup_alpha: float
    paper: tuple[float, float, float, float, float]  # the paper's A, B, C, B&C, gap (%) for comparison


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
SYSTEMS: dict[str, System] = {sid: System(*_TABLE[sid[1]], _PAPER[sid]) for sid in _PAPER}


def selection_metric(system_id: str) -> str:
    """A systems keep the epoch with the best Metric A, B systems the best Metric B."""
    return "metric_a" if system_id.upper().startswith("A") else "metric_b"


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
    from asc.enhance import Enhancement
    from asc.models import ModelConfig
    from asc.train import TrainConfig

    system = get_system(system_id)
    model = ModelConfig(name=model_name, pretrained=system.pretrained and model_name == "msxception",
                        weights=weights, allow_download=allow_download)
    return TrainConfig(store=store, model=model,
                       enhancement=Enhancement(system.normalization, system.mean_subtraction, system.median_filter),
                       mixup_alpha=system.mixup_alpha, selection=selection_metric(system_id), **train_settings)


def format_comparison(rows) -> str:
    """``rows`` of (system id, System, train() result): the device table beside the paper's."""
    head = (f"{'system':<7}{'A':>7}{'B':>7}{'C':>7}{'B&C':>7}{'gap':>7}  |  paper (MSXception, real data):"
            f"{'A':>6}{'B':>6}{'C':>6}{'B&C':>6}{'gap':>6}")
    lines = [head, "-" * len(head)]
    for sid, system, result in rows:
        t = result["test"]
        ours = "".join(f"{100 * t.get(k, float('nan')):>7.1f}" for k in ("acc_a", "acc_b", "acc_c", "acc_bc", "device_gap"))
        paper = "".join(f"{v:>6.1f}" for v in system.paper)
        lines.append(f"{sid:<7}{ours}  |  {'':<30}{paper}")
    return "\n".join(lines)
