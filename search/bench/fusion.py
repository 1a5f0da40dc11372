"""``python -m search bench-fusion``: the fusion methods measured across many small searches drawn from
recorded trials, at several sizes of the selection split.

A fusion is chosen on the selection clips and judged on clips it never saw. On real data the selection
split holds few B and C clips (TAU 2019 Mobile's fold 1 trains on 540 of each against 9,185 A), and a
method that fits the noise of a handful of clips gains on them and loses elsewhere. One search shows
one draw of that noise; this benchmark shows its distribution.

**Data.** The trials of one MLflow experiment (a search that logged ``predictions.parquet``, the
evaluation split's predictions included), each seed of a several-seed trial a candidate of its own.
The evaluation split is the pool of clips: the trials never chose anything on it under the
``validation`` protocol.

**A draw.** ``--trials`` configurations at random, one recorded seed of each at random (a small
search). The pool is split at random, by device: a selection part with ``n`` B&C clips (half B, half
C) and ``A_PER_BC`` times as many A clips (the ratio of a real held-out split is larger; capped at half
the pool's A clips), and the rest, where the result is scored. Every method in ``METHODS`` then fuses
the draw's candidates on the selection part by Metric B (``search.fuse.choose``, as ``fuse`` does), and
so does the best single candidate (chosen the same way). The figure is the gain in Metric B over that
best single candidate on the rest, in points; the same draws serve every method (paired).

It prints, per selection size and method, the gain's median and 10th-90th percentiles, how often the
method ended below the best single candidate (what a gate on noise guards against), how often it kept
the best single candidate alone, and the median gain on the selection part itself (what a user sees
when choosing), with the goals: the default's median gain >= 0 at every size, and its 10th
percentile no worse than plain greedy's.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


from asc.cli import ArgumentParser, COUNT
from asc.errors import AscError
from asc.progress import progress as show_progress
from search.bench import add_report_options, machine_line
from search.objectives import Objective

# MLflow, the fusion command's module (MLflow, torch) and matplotlib are imported late, by the part
# that uses them: `--help` starts without them.

SIZES = (8, 20, 60)  # B&C clips in the selection part
A_PER_BC = 7.5  # A clips per B&C clip in the selection part (a 60 A : 8 B&C split, as in small sets)
# (label, fuse --method, options): the default first, then the methods `fuse --method` keeps.
METHODS = (("bootstrap (default)", "bootstrap", {}), ("greedy", "greedy", {}), ("greedy, 20 bags", "greedy", {"bags": 20}),
           ("gated", "gated", {}), ("top 3", "top", {"size": 3}), ("per enhancement", "per-enhancement", {}))


@dataclass
class Pool:
    """Every recorded candidate's evaluation-split probabilities, aligned to one list of clips."""

    candidates: list  # search.fuse.Candidate, one per trial and seed
    configs: list[list[int]]  # candidate indices per trial run (its seeds)
    clips: object  # search.fuse.Clips of the evaluation split
    classes: list[str]
    experiment: str


def load_pool(mlflow_uri: str, experiment: str) -> Pool:
    """The experiment's finished trials with their predictions, each seed a candidate."""
    from mlflow.tracking import MlflowClient

    from search.fuse import load_candidates
    from search.tracking import check_tracking_uri

    check_tracking_uri(mlflow_uri, must_exist=True)
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise AscError(f"MLflow at {mlflow_uri}: no experiment {experiment!r}")
    candidates, clips, classes, notes, _ = load_candidates(client, exp.experiment_id, progress=True,
                                                           seed_members=True)
    for note in notes:
        print(f"note: {note}")
    if "evaluation" not in clips:
        raise AscError(f"experiment {experiment!r}: its predictions hold no evaluation clips to draw selections from")
    configs: dict[str, list[int]] = {}
    for i, c in enumerate(candidates):
        configs.setdefault(c.run_id, []).append(i)
    return Pool(candidates, list(configs.values()), clips["evaluation"], classes, experiment)


def check_sizes(pool: Pool, sizes: list[int], trials: int) -> None:
    devices = pool.clips.devices
    b, c, a = (int((devices == d).sum()) for d in ("b", "c", "a"))
    for n in sizes:
        if n < 2 or n % 2:
            raise AscError(f"--sizes {n}: an even number of B&C clips, at least 2 (half B, half C)")
        if n // 2 > min(b, c) // 2:
            raise AscError(f"--sizes {n}: the evaluation split holds {b} B and {c} C clips; a selection of {n // 2} "
                           f"of each leaves too few to score on (at most half of each)")
    if a < 2:
        raise AscError(f"experiment {pool.experiment!r}: the evaluation split holds {a} A clips")
    if not 2 <= trials <= len(pool.configs):
        raise AscError(f"--trials {trials}: between 2 and the {len(pool.configs)} recorded trials")


def split_pool(devices: np.ndarray, n_bc: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(selection indices, rest indices) of the pool: n_bc/2 B, n_bc/2 C and A_PER_BC * n_bc A clips
    (at most half of the pool's A clips) in the selection part; every other clip of the seen devices
    in the rest."""
    chosen = []
    for device, count in (("b", n_bc // 2), ("c", n_bc // 2)):
        chosen.append(rng.choice(np.flatnonzero(devices == device), size=count, replace=False))
    a = np.flatnonzero(devices == "a")
    chosen.append(rng.choice(a, size=min(round(A_PER_BC * n_bc), len(a) // 2), replace=False))
    selection = np.sort(np.concatenate(chosen))
    rest = np.setdiff1d(np.flatnonzero(np.isin(devices, ["a", "b", "c"])), selection)
    return selection, rest


def one_draw(pool: Pool, n_bc: int, trials: int, rng: np.random.Generator, seed: int) -> dict:
    """One small search and one selection split: every method's gain over the best single candidate, on
    the rest (``eval``) and on the selection part (``sel``), in points of Metric B, and its member count."""
    from search.fuse import Clips, choose, metrics_of

    objective = Objective("metric_b")
    picked = [int(rng.choice(pool.configs[k])) for k in rng.choice(len(pool.configs), size=trials, replace=False)]
    sel, rest = split_pool(pool.clips.devices, n_bc, rng)
    parts = {"selection": sel, "evaluation": rest}
    clips = {s: Clips(pool.clips.filenames[ix], pool.clips.devices[ix], pool.clips.labels[ix], pool.clips.seen)
             for s, ix in parts.items()}
    candidates = [replace(pool.candidates[i], probs={s: pool.candidates[i].probs["evaluation"][ix]
                                                     for s, ix in parts.items()}) for i in picked]

    def metric_b(selection, split: str) -> float:
        fused = selection.fuse([c.probs[split] for c in candidates])
        return 100 * objective.values(metrics_of(fused, clips[split]))["objective"]

    best = choose(candidates, clips, "top", objective, size=1)
    base = {s: metric_b(best, s) for s in parts}
    out = {}
    for label, method, options in METHODS:
        chosen = choose(candidates, clips, method, objective, seed=seed, **options)
        out[label] = {"eval": metric_b(chosen, "evaluation") - base["evaluation"],
                      "sel": metric_b(chosen, "selection") - base["selection"],
                      "members": len(chosen.members),
                      "single": list(chosen.members) == list(best.members)}
    return out


def run(pool: Pool, sizes: list[int], trials: int, draws: int, seed: int, progress: bool) -> dict:
    rng = np.random.default_rng(seed)
    results: dict[int, list[dict]] = {}
    with show_progress(len(sizes) * draws, "draws", "draw", progress) as bar:
        for n in sizes:
            results[n] = []
            for d in range(draws):
                results[n].append(one_draw(pool, n, trials, rng, seed + d))
                bar.update()
    return results


def summarize(results: dict[int, list[dict]]) -> list[dict]:
    rows = []
    for n, draws in results.items():
        for label, _, _ in METHODS:
            gains = np.array([d[label]["eval"] for d in draws])
            rows.append({"n_bc": n, "method": label, "median": float(np.median(gains)),
                         "p10": float(np.percentile(gains, 10)), "p90": float(np.percentile(gains, 90)),
                         "mean": float(gains.mean()), "lost": float(np.mean(gains < 0)),
                         "single": float(np.mean([d[label]["single"] for d in draws])),
                         "members": float(np.mean([d[label]["members"] for d in draws])),
                         "sel_median": float(np.median([d[label]["sel"] for d in draws])), "draws": len(draws)})
    return rows


def goals(rows: list[dict]) -> list[tuple[str, bool]]:
    default, greedy = METHODS[0][0], METHODS[1][0]
    out = []
    for n in sorted({r["n_bc"] for r in rows}):
        by = {r["method"]: r for r in rows if r["n_bc"] == n}
        out.append((f"{n} B&C: default's median gain {by[default]['median']:+.2f} >= 0", by[default]["median"] >= 0))
        out.append((f"{n} B&C: default's 10th percentile {by[default]['p10']:+.2f} >= greedy's "
                    f"{by[greedy]['p10']:+.2f}", by[default]["p10"] >= by[greedy]["p10"]))
    return out


def format_table(rows: list[dict], pool: Pool, trials: int, machine: str, seconds: float) -> str:
    header = ["B&C sel", "A sel", "method", "median", "p10", "p90", "mean", "lost", "kept single", "members",
              "median on sel"]
    a_clips = int((pool.clips.devices == "a").sum())
    cells = [[str(r["n_bc"]), str(min(round(A_PER_BC * r["n_bc"]), a_clips // 2)), r["method"],
              f"{r['median']:+.2f}", f"{r['p10']:+.2f}", f"{r['p90']:+.2f}", f"{r['mean']:+.2f}",
              f"{100 * r['lost']:.0f}%", f"{100 * r['single']:.0f}%", f"{r['members']:.1f}",
              f"{r['sel_median']:+.2f}"] for r in rows]
    widths = [max(len(x[i]) for x in [header, *cells]) for i in range(len(header))]
    lines = [" | ".join(f"{v:<{w}}" if i == 2 else f"{v:>{w}}" for i, (v, w) in enumerate(zip(row, widths))).rstrip()
             for row in [header, *cells]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    devices = pool.clips.devices
    text = [machine,
            f"experiment {pool.experiment!r}: {len(pool.configs)} trials, {len(pool.candidates)} candidates (seeds); "
            f"pool = its evaluation split, {int((devices == 'a').sum())} A, {int((devices == 'b').sum())} B, "
            f"{int((devices == 'c').sum())} C clips; {rows[0]['draws']} draws per size of {trials} trials each; "
            f"{seconds:.0f} s",
            "", "gain in Metric B over the best single candidate (chosen on the same clips), points, on the pool's other "
            "clips:", *lines, "",
            "lost: share of draws where the method ends below the best single candidate on the other clips; "
            "kept single: share where its fusion is the best single candidate alone; median on sel: the gain on "
            "the clips it chose on.", "goals:"]
    text += [f"  {'met    ' if ok else 'NOT met'}  {line}" for line, ok in goals(rows)]
    return "\n".join(text)


def plot(rows_by_draw: dict[int, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(rows_by_draw)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 4), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], sizes):
        data = [[d[label]["eval"] for d in rows_by_draw[n]] for label, _, _ in METHODS]
        ax.boxplot(data, whis=(10, 90), showfliers=False)
        ax.set_xticks(range(1, len(METHODS) + 1), [m[0] for m in METHODS], rotation=30, ha="right")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{n} B&C selection clips")
    axes[0][0].set_ylabel("gain in Metric B over the best single (points)")
    fig.suptitle("fusion gain on unseen clips (box: quartiles, whiskers: 10th-90th percentile)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m search bench-fusion", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, help="the MLflow experiment (search) whose trials to draw from")
    parser.add_argument("--mlflow-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./runs/mlflow.db)")
    parser.add_argument("--sizes", type=COUNT, nargs="+", default=list(SIZES),
                        help="B&C clips in the selection part (default: %(default)s)")
    parser.add_argument("--trials", type=COUNT, default=8, help="trials per drawn search (default %(default)s)")
    parser.add_argument("--draws", type=COUNT, default=100, help="draws per size (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default %(default)s)")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the gains' distributions to this PNG")
    add_report_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from search.tracking import tracking_uri

    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    pool = load_pool(tracking_uri(args.mlflow_uri, Path("runs")), args.experiment)
    check_sizes(pool, args.sizes, args.trials)
    results = run(pool, args.sizes, args.trials, args.draws, args.seed, progress=True)
    rows = summarize(results)
    print(format_table(rows, pool, args.trials, machine_line(), time.perf_counter() - start))
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "goals": [{"goal": g, "met": ok} for g, ok in goals(rows)],
                                         "trials": args.trials, "seed": args.seed}, indent=1))
    return 0 if all(math.isfinite(r["median"]) for r in rows) else 1
