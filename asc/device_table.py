"""The device table every command prints: accuracy per device (A, B, C, ...), B&C, the device gap,
the devices unseen in training and their gap where there are any, Metric A and B, in percent.

The search's best trials and Pareto front (``search.report``), its progress lines (``search.tuner``),
a fusion (``search.fuse``) and a prediction (``search.predict``) build their columns, heads and
cells here, and so do ``python -m asc compare`` (``asc.systems``) and ``bench-devices``, whose cells
are means over seeds with their standard errors (:func:`mean_se`), the paper's figures beside.
"""

from __future__ import annotations

import math

from asc.metrics import column_head, device_accuracies

WIDTH = 7  # characters per column
MEAN_SE_WIDTH = 13  # characters per column of "mean +-se" cells


def pct(value, width: int = 0) -> str:
    """A fraction in percent with one decimal, at least ``width`` characters; a missing figure (None,
    nan) is a dash centred in them."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".center(width)
    return f"{100 * value:{width}.1f}"


def columns(devices: list[str], unseen: bool) -> tuple[list[str], list[str]]:
    """(metric keys, column heads) of a device table: every device, B&C (the seen devices but A),
    the gap; where there are devices unseen in training, their pooled accuracy and its gap; Metric A, B."""
    keys = ([f"acc_{d}" for d in devices] + ["acc_bc", "device_gap"] + (["acc_unseen", "unseen_gap"] if unseen else [])
            + ["metric_a", "metric_b"])
    return keys, [column_head(k) for k in keys]


def columns_of(metrics: list[dict]) -> tuple[list[str], list[str]]:
    """:func:`columns` for a table of these metrics dicts: the devices any of them has, A first."""
    devices = sorted({d for m in metrics for d in device_accuracies(m)}, key=lambda d: (d != "a", d))
    return columns(devices, any("acc_unseen" in m for m in metrics))


def head_cells(heads: list[str], width: int = WIDTH) -> str:
    """The column heads, each right-aligned in a column of ``width`` characters."""
    return "".join(f"{h:>{width}}" for h in heads)


def mean_se(mean, sem) -> str:
    """A mean over seeds and its standard error, fractions in percent (``62.3 +- 1.4``; the mean
    alone where there is no standard error), right-aligned in a column of :data:`MEAN_SE_WIDTH`."""
    missing = sem is None or (isinstance(sem, float) and math.isnan(sem))
    return f"{pct(mean, 5) + (' ' * 7 if missing else ' +-' + pct(sem, 4)):>{MEAN_SE_WIDTH}}"


def row_cells(metrics: dict, keys: list[str], prefix: str = "", width: int = 0, suffix: str = "") -> str:
    """One row's cells: ``metrics[prefix + key + suffix]`` of every key in percent (:func:`pct` with
    ``width``), each right-aligned in its column; ``suffix="_cse"``: the figures' standard errors
    from their clips, each written ``+-x.x``."""
    if suffix:
        return "".join(f"{_plus_minus(metrics.get(prefix + k + suffix)):>{WIDTH}}" for k in keys)
    return "".join(f"{pct(metrics.get(prefix + k), width):>{WIDTH}}" for k in keys)


def _plus_minus(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else "+-" + pct(value).strip()


def device_table(rows: list[tuple[str, str, dict]], splits: list[str], clip_se: tuple[int, ...] = (),
                 titles: dict[str, str] | None = None, seed_se: tuple[int, ...] = ()) -> str:
    """``rows`` of (name, weight cell or None, {split: metrics}): one line each, the splits side by side,
    each under ``titles[split]`` (default ``<split> clips (%)``); under each row of ``clip_se``
    (indices) a line of its figures' standard errors from the clips (``_cse``), and under each of
    ``seed_se`` one of those from the seeds (``_sem``)."""
    keys, heads = columns_of([m for _, _, by_split in rows for m in by_split.values()])
    width = max([len(name) for name, _, _ in rows] + [6]) + 2
    weighted = any(weight is not None for _, weight, _ in rows)  # a weight column only for ensembles
    w = WIDTH if weighted else 0
    cells = WIDTH * len(heads)
    titles = titles or {}
    group = f"{'':<{width + w}}" + "".join(f" |{titles.get(s, s + ' clips (%)'):^{cells}}" for s in splits)
    head = f"{'':<{width}}{'weight' if weighted else '':>{w}}" + "".join(" |" + head_cells(heads) for _ in splits)
    lines = [group.rstrip(), head, "-" * len(head)]
    for k, (name, weight, by_split) in enumerate(rows):
        lines.append(f"{name:<{width}}{weight or '':>{w}}"
                     + "".join(" |" + row_cells(by_split.get(s, {}), keys) for s in splits))
        for indices, suffix, what in ((clip_se, "_cse", "clips"), (seed_se, "_sem", "seeds")):
            if k in indices or k - len(rows) in indices:
                lines.append(f"{f'  +- ({what})':<{width}}{'':>{w}}"
                             + "".join(" |" + row_cells(by_split.get(s, {}), keys, suffix=suffix) for s in splits))
    return "\n".join(lines)
