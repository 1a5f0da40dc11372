"""Device-gap-aware objectives: one pure function of the metrics dict that ``asc.train`` reports.

The trainable, ASHA, Optuna, the summary table and fusion all call :meth:`Objective.values`, so they
all rank trials by the same number. Every objective is maximised except ``objective_abs_gap`` (the second half
of the Pareto pair), which is minimised.

- ``metric_a``: accuracy over all clips (the paper's Metric A);
- ``metric_b``: mean of device A's accuracy and B&C's pooled accuracy (the paper's Metric B);
- ``acc_bc``: accuracy on the non-reference devices seen in training, pooled;
- ``acc_unseen``: accuracy on devices never seen in training, pooled (needs such devices among the
  selection clips: on the synthetic set, the evaluation split, i.e. ``protocol: paper``);
- ``worst_device``: the lowest per-device accuracy, unseen devices included (a device with no clips
  is left out);
- ``gap_penalized``: ``metric_b - lambda * |device_gap|`` (lambda from the space);
- ``pareto``: the pair (``acc_bc`` max, ``|device_gap|`` min), for multi-objective search, reported as
  ``objective_acc_bc`` and ``objective_abs_gap``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from asc.errors import AscError
from asc.metrics import device_accuracies, pooled_gaps

SINGLE = ("metric_a", "metric_b", "acc_bc", "acc_unseen", "worst_device", "gap_penalized")
OBJECTIVES = SINGLE + ("pareto",)
PARETO = (("objective_acc_bc", "max"), ("objective_abs_gap", "min"))
_SUMMARY_KEYS = ("acc_bc", "metric_a", "metric_b", "device_gap")  # and acc_unseen, unseen_gap where there are unseen devices


@dataclass(frozen=True)
class Objective:
    name: str = "metric_b"  # what the search optimises (one of OBJECTIVES)
    gap_lambda: float | None = None  # gap_penalized only: the weight of |device_gap|

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise AscError(f"objective {self.name!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.name == "gap_penalized" and (self.gap_lambda is None or not self.gap_lambda >= 0):
            raise AscError("objective gap_penalized needs lambda >= 0")

    @property
    def multi(self) -> bool:
        return self.name == "pareto"

    @property
    def metrics(self) -> list[str]:
        """The names the values are reported under (Tune results, Optuna, MLflow)."""
        return [m for m, _ in PARETO] if self.multi else ["objective"]

    @property
    def modes(self) -> list[str]:
        return [m for _, m in PARETO] if self.multi else ["max"]

    def label(self) -> str:
        if self.name == "gap_penalized":
            return f"metric_b - {self.gap_lambda:g} * |gap|"
        return "(acc_bc max, |gap| min)" if self.multi else self.name

    def values(self, metrics: dict) -> dict[str, float]:
        """The objective's value(s) from one epoch's metrics, keyed as :attr:`metrics`."""
        if self.multi:
            return {"objective_acc_bc": _get(metrics, "acc_bc"), "objective_abs_gap": abs(_get(metrics, "device_gap"))}
        if self.name == "worst_device":
            devices = [v for v in device_accuracies(metrics).values() if isinstance(v, float) and not math.isnan(v)]
            return {"objective": min(devices) if devices else math.nan}
        if self.name == "gap_penalized":
            return {"objective": _get(metrics, "metric_b") - self.gap_lambda * abs(_get(metrics, "device_gap"))}
        return {"objective": _get(metrics, self.name)}

    def clip_se(self, metrics: dict) -> float:
        """The single objective's standard error from the clips it was measured on (``asc.metrics``:
        a binomial error per device, pooled figures stratified by device, sums of accuracies on disjoint
        clips adding their variances); nan for the Pareto pair."""
        if self.multi:
            return math.nan
        if self.name == "worst_device":
            devices = {d: v for d, v in device_accuracies(metrics).items() if isinstance(v, float) and not math.isnan(v)}
            return _get(metrics, f"acc_{min(devices, key=devices.get)}_cse") if devices else math.nan
        if self.name == "gap_penalized":
            # Var(MB - l s gap) = Var(MB) + l^2 Var(gap) - 2 l s Cov(MB, gap), with Cov = (Var(A) - Var(B&C)) / 2
            var_a, var_bc = _get(metrics, "acc_a_cse") ** 2, _get(metrics, "acc_bc_cse") ** 2
            lam, sign = self.gap_lambda, math.copysign(1.0, _get(metrics, "device_gap"))
            var = (var_a + var_bc) / 4 + lam ** 2 * (var_a + var_bc) - lam * sign * (var_a - var_bc)
            return math.sqrt(var) if var >= 0 else math.nan
        return _get(metrics, f"{self.name}_cse")


def _get(metrics: dict, key: str) -> float:
    value = metrics.get(key, math.nan)
    return float(value) if value is not None else math.nan


def summary(metrics: dict, devices: list[str]) -> dict[str, float]:
    """The device columns every table shows: ``acc_<device>`` for each device, acc_bc, Metric A and B, gap."""
    return {k: _get(metrics, k) for k in [f"acc_{d}" for d in devices] + list(_SUMMARY_KEYS)}


POOLED = ("metric_b", "acc_bc", "gap_penalized", "pareto")  # acc_bc (B and C pooled) is part of each


def check_pooled_devices(objective: str, selection_devices, seen_devices, culprit: str,
                         instead: str = "choose another objective") -> None:
    """An objective that pools the devices seen in training besides the reference (B and C) needs
    selection clips of each of them: without C, "B&C" is B alone and Metric B chooses on another
    figure than it says. One line naming ``culprit`` (a space or an experiment), the device missing
    and what would help (``instead``: the other way out)."""
    if objective not in POOLED:
        return
    pooled, missing = pooled_gaps(selection_devices, seen_devices)
    if missing:  # none at all is refused where the selection is made
        raise AscError(f"{culprit}: {objective} pools devices {', '.join(d.upper() for d in pooled)} (seen in "
                       f"training), but the selection clips hold none of device "
                       f"{', '.join(d.upper() for d in missing)}: its figure would be "
                       f"{', '.join(d.upper() for d in pooled if d not in missing)}'s alone; hold out more locations "
                       f"for the selection (validation_share in the space) or {instead}")
