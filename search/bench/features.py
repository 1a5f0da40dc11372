"""``python -m search bench-features``: this project's feature figures beside the references, in one run.

Everything is measured on the same synthetic 10 s, 44.1 kHz, 24-bit clips (``asc.synth``), in this
order, so that a figure and its reference come from the same machine, clips and page cache:

1. Extraction, clips/s. References, one process each, before Ray starts: decoding only (soundfile,
   the floor) and the paper's per-file loop (``librosa.load`` + ``melspectrogram`` + ``log``, one
   BLAS thread so that it is one core's rate; numba warmed up on one clip first). This project:
   ``search.prepare.prepare`` with 128 Mel bands, then with 64, 128 and 256 into a fresh store,
   wall clock around the call, after Ray was started and its workers warmed up on a tiny separate
   dataset (Ray's start-up is not in the figure).
2. Median filter (7 x 21) on the store's 128 x 430 features, ms/clip. Reference: the paper's loader,
   ``scipy.signal.medfilt2d`` on every clip in every epoch. This project: GMS-normalised,
   median-filtered features cached once in the store (``FeatureStore.derived``, built with Ray's
   ``ray_map`` on every core, and serially for comparison), then read each epoch; against an epoch
   of the un-filtered features.
3. Store read, GB/s: an epoch of the store's features in shuffled batches of 32 (page-cached, after
   one warm-up pass), against ``np.copyto`` of the same number of bytes in memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from asc.cli import ArgumentParser, COUNT
from asc.enhance import CachedMedianFilter, Enhancement
from asc.errors import AscError
from search.bench import CpuMeter, add_report_options, json_rows, log, run_benchmark, synth_for, table_lines

PAPER_EPS = np.finfo(np.float32).eps
MEDIAN_SIZE = (7, 21)
BATCH = 32
REPEATS = 3  # best of, for the in-memory reads and the copy
MEDFILT_REFERENCE_CLIPS = 256  # medfilt2d costs ~90 ms a clip: time at most this many
SUBDIRS = ("data", "warmup-data", "warmup-store", "store-1", "store-3")
# The rest (the store, the synthetic set, Ray, librosa, soundfile, scipy's filters) is imported late, by
# the step that uses it: `--help` starts without it.


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def machine_info() -> dict:
    import librosa  # late, as noted at the top
    import pyarrow
    import ray
    import scipy

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = "unknown"
    try:
        from threadpoolctl import threadpool_info  # optional: without it the BLAS is "unknown"

        import scipy.linalg  # noqa: F401  (loads scipy's own BLAS, if it has one)

        infos = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if infos:
            blas = ", ".join(f"{Path(i['filepath']).parent.name}: {i.get('internal_api')} {i.get('version')} "
                             f"{i.get('architecture')} x{i.get('num_threads')}" for i in infos)
    except ImportError:
        pass
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS") if k in os.environ}
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "librosa": librosa.__version__, "pyarrow": pyarrow.__version__,
            "ray": ray.__version__, "blas": blas, "env": env}


def _paper_features(path: str) -> np.ndarray:
    """The paper's per-file extraction, as its code does it."""
    import librosa  # late, as noted at the top

    y, sr = librosa.load(path, sr=None)
    S = librosa.feature.melspectrogram(y=y, sr=44100, n_fft=4096, hop_length=1024, n_mels=128, fmax=22050)
    return np.log(S + PAPER_EPS)


def _blas_threads(n: int | None):
    """A context limiting BLAS to ``n`` threads (no-op for None or without threadpoolctl)."""
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits  # optional: without it BLAS keeps its threads
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def epoch_seconds(store, order: np.ndarray, batch: int = BATCH, repeats: int = REPEATS) -> float:
    """Best time of ``repeats`` epochs gathering ``store.features`` in batches, after one warm-up epoch."""
    def one_epoch():
        for i in range(0, len(order), batch):
            store.features(order[i:i + batch])

    one_epoch()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        one_epoch()
        best = min(best, time.perf_counter() - start)
    return best


def copy_seconds(nbytes_shape: tuple, dtype, repeats: int = REPEATS) -> float:
    src = np.random.default_rng(1).standard_normal(nbytes_shape, dtype=np.float32).astype(dtype, copy=False)
    dst = np.zeros_like(src)  # pages touched before timing
    np.copyto(dst, src)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return best


# --------------------------------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------------------------------
def run(work: Path, clips: int, cpus: int, shard_size: int, wait_budget: float = 0.0) -> dict:
    """Every figure of the module docstring, measured in its order; the phases below, one a step."""
    from asc.features import FeatureConfig  # late, as noted at the top
    from asc.store import FeatureStore

    fig: dict = {}
    meter = CpuMeter()
    with meter.measure("before start (1 s idle)"):
        time.sleep(1.0)
    meter.wait_budget = wait_budget
    dataset, warm = _synthesize(work, clips, fig)
    paper_first = _references([str(dataset.path(c)) for c in dataset.clips], meter, fig)
    three = [FeatureConfig(n_mels=m) for m in (64, 128, 256)]
    enhancement = Enhancement(normalization="gms", median_filter=MEDIAN_SIZE)
    _start_ray(work, cpus, len(warm), three, enhancement, fig)
    store_path = _prepare(work, cpus, shard_size, three, len(dataset), meter, fig)
    store = FeatureStore(store_path)
    first = store.features([store.index_of(dataset.clips[0].filename)])[0]
    fig["feature_shape"] = list(first.shape)
    fig["store_vs_paper_max_abs_diff"] = float(np.abs(first - paper_first[:, :-1]).max())
    filtered, transform = _median_cache_ray(store, enhancement, len(dataset), meter, fig)
    order = np.random.default_rng(0).permutation(len(dataset))
    _median_serial(store, filtered, transform, first, dataset.clips[0].filename, enhancement, order, meter, fig)
    _store_read(store_path, order, meter, fig)
    meter.wait_budget = 0.0
    with meter.measure("after the end (1 s idle)"):
        time.sleep(1.0)
    fig["other_processes_cores"] = {k: round(v, 3) for k, v in meter.sections.items()}
    fig["waited_for_quiet_seconds"] = round(meter.waited, 1)
    return fig


def _synthesize(work: Path, clips: int, fig: dict):
    """[1/7] The clips to measure on, and a short set that warms Ray's workers up: (both datasets)."""
    import soundfile  # late, as noted at the top

    from asc.synth import SynthConfig, write_dataset

    config, expected = synth_for(clips, {"seconds": 10.0, "seed": 0})
    log(f"[1/7] synthesizing {expected} clips (segments_per_scene={config.segments_per_scene}, "
         f"parallel_per_scene={config.parallel_per_scene}) into {work / 'data'}")
    start = time.perf_counter()
    dataset = write_dataset(work / "data", config)
    warm = write_dataset(work / "warmup-data", SynthConfig(segments_per_scene=2, parallel_per_scene=0, seconds=2.0, seed=1))
    fig["clips"] = len(dataset)
    fig["synth_seconds"] = time.perf_counter() - start
    fig["synth_config"] = {"segments_per_scene": config.segments_per_scene,
                           "parallel_per_scene": config.parallel_per_scene, "seed": config.seed}
    info = soundfile.info(str(dataset.path(dataset.clips[0])))
    fig["clip_format"] = f"{info.duration:.1f} s, {info.samplerate} Hz, {info.subtype}"
    return dataset, warm


def _references(paths: list[str], meter, fig: dict) -> np.ndarray:
    """[2/7] 1a the decoding floor and 1b the paper's per-file loop, in this process; returns the
    paper's features of the first clip."""
    import soundfile  # late, as noted at the top

    n = len(paths)
    log("[2/7] references: decoding and the paper's per-file loop (one process)")
    soundfile.read(paths[0], dtype="float32")
    with meter.measure("decode"):
        start = time.perf_counter()
        for p in paths:
            soundfile.read(p, dtype="float32")
        fig["decode_seconds"] = time.perf_counter() - start
    fig["decode_clips_per_s"] = n / fig["decode_seconds"]

    paper_first = _paper_features(paths[0])  # numba / librosa warm-up, not timed
    for key, threads in (("paper", 1), ("paper_default_blas", None)):
        with _blas_threads(threads), meter.measure(key):
            start = time.perf_counter()
            for p in paths:
                _paper_features(p)
            fig[f"{key}_seconds"] = time.perf_counter() - start
        fig[f"{key}_clips_per_s"] = n / fig[f"{key}_seconds"]
    return paper_first


def _start_ray(work: Path, cpus: int, warm_clips: int, configs: list, enhancement, fig: dict) -> None:
    """[3/7] Ray started and its workers warmed up on the short set (neither timed in the figures)."""
    from asc.store import FeatureStore  # late, as noted at the top
    from search.prepare import init_ray, prepare, ray_map

    log(f"[3/7] starting Ray on {cpus} cpus and warming its workers up on {warm_clips} short clips")
    start = time.perf_counter()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    init_ray(None, cpus)
    warm_report = prepare(work / "warmup-data", work / "warmup-store", configs, num_cpus=cpus, shard_size=2, progress=False)
    warm_store = next(FeatureStore(p) for p in warm_report.built if FeatureStore(p).config.n_mels == 128)
    warm_store.derived(enhancement.cache_key,
                       CachedMedianFilter(enhancement, tuple(warm_store.train_mean), tuple(warm_store.train_std)),
                       map_fn=ray_map)
    fig["ray_warmup_seconds"] = time.perf_counter() - start


def _prepare(work: Path, cpus: int, shard_size: int, three: list, n: int, meter, fig: dict) -> Path:
    """[4/7] 1c / 1d ``prepare`` with 128 Mel bands, then 64 + 128 + 256; returns the 128-band store."""
    from asc.features import FeatureConfig  # late, as noted at the top
    from search.prepare import prepare

    log(f"[4/7] prepare: 128 Mel bands, then 64 + 128 + 256 (shard size {shard_size})")
    for key, configs, folder in (("prepare1", [FeatureConfig(n_mels=128)], "store-1"), ("prepare3", three, "store-3")):
        with meter.measure(key):
            start = time.perf_counter()
            report = prepare(work / "data", work / folder, configs, num_cpus=cpus, shard_size=shard_size, progress=False)
            seconds = time.perf_counter() - start
        if len(report.built) != len(configs) or report.clips != n:
            raise AscError(f"{work / folder}: prepare built {len(report.built)} stores of {report.clips} clips, "
                           f"expected {len(configs)} of {n}")
        fig[f"{key}_seconds"] = seconds
        fig[f"{key}_report_seconds"] = report.seconds
        fig[f"{key}_clips_per_s"] = n / seconds
        if key == "prepare1":
            store_path = report.built[0]
    fig["shards"] = [min(shard_size, n - i) for i in range(0, n, shard_size)]
    return store_path


def _median_cache_ray(store, enhancement, n: int, meter, fig: dict):
    """[5/7] 2 the median-filtered cache built with Ray, which then stops; returns (the cache, its
    transform)."""
    import ray  # late, as noted at the top

    from search.prepare import ray_map

    log("[5/7] median filter: building the cached copy with Ray")
    transform = CachedMedianFilter(enhancement, tuple(store.train_mean), tuple(store.train_std))
    with meter.measure("cache_build_ray"):
        start = time.perf_counter()
        filtered = store.derived(enhancement.cache_key, transform, map_fn=ray_map)
        fig["cache_build_ray_ms_per_clip"] = (time.perf_counter() - start) * 1000 / n
    ray.shutdown()  # the rest runs in this process, with no Ray processes beside it
    return filtered, transform


def _median_serial(store, filtered, transform, first: np.ndarray, first_name: str, enhancement, order: np.ndarray,
                   meter, fig: dict) -> None:
    """[6/7] 2 the references in this process: ``medfilt2d`` per clip, the cache built serially, and
    epochs read with and without the filter."""
    import scipy.signal  # late, as noted at the top

    n = len(order)
    log("[6/7] median filter: scipy.signal.medfilt2d per clip, serial cache build, epoch reads")
    m = min(n, MEDFILT_REFERENCE_CLIPS)
    x = store.features(np.arange(m))
    scipy.signal.medfilt2d(x[0], MEDIAN_SIZE)
    with meter.measure("medfilt2d"):
        start = time.perf_counter()
        for i in range(m):
            scipy.signal.medfilt2d(x[i], MEDIAN_SIZE)
        fig["medfilt2d_ms_per_clip"] = (time.perf_counter() - start) * 1000 / m
    fig["medfilt2d_clips_timed"] = m

    normalized = first - store.train_mean[:, None]
    expected_filtered = normalized - scipy.signal.medfilt2d(normalized, MEDIAN_SIZE)
    got = filtered.features([filtered.index_of(first_name)])[0]
    fig["cache_vs_medfilt2d_max_abs_diff"] = float(np.abs(got - expected_filtered).max())

    transform(x[:1])  # imports scipy.ndimage in this process
    with meter.measure("cache_build_serial"):
        start = time.perf_counter()
        store.derived(enhancement.cache_key + "-serial", transform)
        fig["cache_build_serial_ms_per_clip"] = (time.perf_counter() - start) * 1000 / n

    meter.wait_quiet()
    fig["epoch_filtered_ms_per_clip"] = epoch_seconds(filtered, order) * 1000 / n
    fig["epoch_plain_ms_per_clip"] = epoch_seconds(store, order) * 1000 / n


def _store_read(store_path: Path, order: np.ndarray, meter, fig: dict) -> None:
    """[7/7] 3 an epoch read from a freshly opened store against a copy of as many bytes in memory."""
    from asc.store import FeatureStore  # late, as noted at the top

    log("[7/7] store read vs an in-memory copy")
    fresh = FeatureStore(store_path)
    meter.wait_quiet()
    shape = (len(order), *fresh.shape)
    dtype = np.dtype(fresh.config.dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    fig["epoch_bytes"] = nbytes
    fig["store_read_gb_per_s"] = nbytes / epoch_seconds(fresh, order) / 1e9
    fig["copy_gb_per_s"] = nbytes / copy_seconds(shape, dtype) / 1e9


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------
def rows(fig: dict, cpus: int) -> list[dict]:
    others = fig["other_processes_cores"]

    def row(measure, ours, ref, goal=None, check=None, fmt="{:.1f}", ratio_fmt="{:.2f}", sections=()):
        ratio = ours / ref if ref else math.nan
        met = "-" if check is None else ("yes" if check(ratio) else "NO")
        contended = [k for k in sections if others.get(k, 0.0) >= CpuMeter.QUIET]
        if contended:
            met += "*"
        return {"measure": measure, "this_project": ours, "reference": ref, "ratio": ratio, "goal": goal or "-",
                "met": met, "contended": contended, "fmt": fmt, "ratio_fmt": ratio_fmt}

    c, b = fig["prepare1_clips_per_s"], fig["paper_clips_per_s"]
    speedup_goal = round(0.9 * cpus, 2)
    return [
        row(f"extraction 128 Mel, clips/s: prepare on {cpus} cpus | paper loop, 1 core", c, b,
            f">= {speedup_goal:g}", lambda r: r >= speedup_goal, sections=("prepare1", "paper")),
        row("parallel efficiency: prepare clips/s per cpu | paper loop, 1 core", c / cpus, b,
            ">= 0.90", lambda r: r >= 0.90, sections=("prepare1", "paper")),
        row("three Mel counts vs one, s: prepare 64+128+256 | prepare 128", fig["prepare3_seconds"],
            fig["prepare1_seconds"], "<= 1.5", lambda r: r <= 1.5, fmt="{:.2f}", sections=("prepare1", "prepare3")),
        row("extraction 64+128+256 Mel, clips/s: prepare | paper loop (128 only)", fig["prepare3_clips_per_s"], b,
            sections=("prepare3", "paper")),
        row("paper loop, clips/s: 1 core | 1 process, default BLAS threads", b, fig["paper_default_blas_clips_per_s"],
            sections=("paper", "paper_default_blas")),
        row("decode floor, clips/s: prepare per cpu | soundfile.read, 1 core", c / cpus, fig["decode_clips_per_s"],
            sections=("prepare1", "decode")),
        row("median filter per epoch, ms/clip: cached read | medfilt2d", fig["epoch_filtered_ms_per_clip"],
            fig["medfilt2d_ms_per_clip"], fmt="{:.3f}", ratio_fmt="{:.5f}", sections=("medfilt2d",)),
        row("epoch with / without median filter, ms/clip: cached | plain read", fig["epoch_filtered_ms_per_clip"],
            fig["epoch_plain_ms_per_clip"], "<= 2", lambda r: r <= 2, fmt="{:.3f}"),
        row(f"median cache build once, ms/clip: ray_map on {cpus} cpus | medfilt2d",
            fig["cache_build_ray_ms_per_clip"], fig["medfilt2d_ms_per_clip"], sections=("cache_build_ray", "medfilt2d")),
        row("median cache build once, ms/clip: serial, 1 process | medfilt2d",
            fig["cache_build_serial_ms_per_clip"], fig["medfilt2d_ms_per_clip"],
            sections=("cache_build_serial", "medfilt2d")),
        row("store read, GB/s: store.features, batches of 32 | np.copyto", fig["store_read_gb_per_s"],
            fig["copy_gb_per_s"], ">= 0.5", lambda r: r >= 0.5, fmt="{:.2f}"),
    ]


def format_table(fig: dict, machine: dict, table: list[dict], cpus: int) -> str:
    env = " ".join(f"{k}={v}" for k, v in machine["env"].items()) or "no OPENBLAS_*/OMP_NUM_THREADS set"
    lines = [
        f"machine: {machine['cpu']}, {machine['cores']} cores (benchmark uses {cpus}); python {machine['python']}, "
        f"numpy {machine['numpy']}, scipy {machine['scipy']}, librosa {machine['librosa']}, "
        f"pyarrow {machine['pyarrow']}, ray {machine['ray']}",
        f"blas: {machine['blas']}; {env}",
        f"clips: {fig['clips']} ({fig['clip_format']}; segments_per_scene={fig['synth_config']['segments_per_scene']}, "
        f"parallel_per_scene={fig['synth_config']['parallel_per_scene']}, seed={fig['synth_config']['seed']}); "
        f"features {'x'.join(map(str, fig['feature_shape']))}; prepare shards {'+'.join(map(str, fig['shards']))}",
        "",
    ]
    lines += table_lines(table)
    lines += [
        "",
        "'this project | reference' in a measure names the two columns; ratio = this project / reference.",
        "paper loop = librosa.load + melspectrogram + log per file, one process, BLAS limited to one thread; "
        "prepare = search.prepare.prepare, wall clock, Ray started and warmed up beforehand.",
        f"medfilt2d = scipy.signal.medfilt2d(x, (7, 21)) per clip, as the paper's loader pays every epoch "
        f"(timed on {fig['medfilt2d_clips_timed']} clips); cached = FeatureStore.derived(GMS + median filter), "
        f"built once, then read in batches of {BATCH} (best of {REPEATS} epochs).",
        f"checks: store features vs paper's [:, :-1] max |diff| {fig['store_vs_paper_max_abs_diff']:.2e}; "
        f"cached filter vs GMS + medfilt2d max |diff| {fig['cache_vs_medfilt2d_max_abs_diff']:.2e}",
        _contention_line(fig),
        f"not in the figures: synthesis {fig['synth_seconds']:.1f} s, Ray start + warm-up {fig['ray_warmup_seconds']:.1f} s.",
    ]
    return "\n".join(lines)


def _contention_line(fig: dict) -> str:
    others = fig["other_processes_cores"]
    worst = max(others, key=lambda k: others[k] if not math.isnan(others[k]) else -1)
    text = (f"other processes' CPU, in cores: worst {others[worst]:.2f} ({worst}); "
            + ", ".join(f"{k} {v:.2f}" for k, v in others.items()))
    if others[worst] >= CpuMeter.QUIET:
        text = ("* = other processes used >= 0.1 core while that figure was measured: it is contended. " + text)
    if fig.get("waited_for_quiet_seconds"):
        text += f"; waited {fig['waited_for_quiet_seconds']:.0f} s in all for a quiet machine"
    return text


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m search bench-features", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=COUNT, default=64,
                        help="about this many clips (the smallest synthetic set with at least as many; default %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the clips and stores go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep what the benchmark wrote")
    parser.add_argument("--cpus", type=COUNT, default=os.cpu_count() or 1, help="CPUs for Ray (default: all, %(default)s)")
    parser.add_argument("--shard-size", type=COUNT, default=32, help="clips per prepare task (prepare's default, %(default)s)")
    add_report_options(parser, quiet_wait=60.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clips < 1 or args.cpus < 1 or args.shard_size < 1:
        print("error: --clips, --cpus and --shard-size must be positive", file=sys.stderr)
        return 2
    created = args.workdir is None or not args.workdir.exists()
    work = Path(tempfile.mkdtemp(prefix="asc-bench-")) if args.workdir is None else args.workdir
    clash = [str(work / d) for d in SUBDIRS if (work / d).exists()]
    if clash:
        print(f"error: {', '.join(clash)} already exist; choose another --workdir", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    return run_benchmark(lambda: _measure(args, work), lambda: _clean_up(work, args.keep, created))


def _measure(args, work: Path) -> None:
    """The figures, then the table (and the ``--json`` file)."""
    fig = run(work, args.clips, args.cpus, args.shard_size, args.quiet_wait)
    machine = machine_info()
    table = rows(fig, args.cpus)
    print(format_table(fig, machine, table, args.cpus), flush=True)
    if args.json:
        out = {"machine": machine, "cpus": args.cpus, "figures": fig, "table": json_rows(table)}
        args.json.write_text(json.dumps(out, indent=1))


def _clean_up(work: Path, keep: bool, created: bool) -> None:
    """What the benchmark wrote: kept, or removed (the whole folder if it made it)."""
    if keep:
        log(f"kept {work}")
    elif created:
        shutil.rmtree(work, ignore_errors=True)
    else:
        for d in SUBDIRS:
            shutil.rmtree(work / d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
