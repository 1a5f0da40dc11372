"""Fill the feature store with Ray tasks: one task per shard of clips, on every core of every node.

``asc.store.build_stores`` owns what a store is (layout, statistics, atomic publish, locks); this
module only gives it an executor that spreads the shard tasks over a Ray cluster (local by default).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Sequence

import ray

import asc
from asc.dataset import Dataset, read_dataset
from asc.errors import AscError
from asc.features import FeatureConfig
from asc.progress import progress as show_progress
from asc.store import MANIFEST, BuildReport, build_stores


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (a running cluster) or start a private local Ray instance.

    ``address="local"`` is used instead of Ray's default so that a stale ``ray start`` cluster on
    this machine is not silently joined. The ``asc`` package travels to the workers with the job, so
    cluster nodes need only the requirements installed.
    """
    if ray.is_initialized():
        return
    if num_cpus is not None and num_cpus < 1:  # Ray would start and never schedule a task: a hang
        raise AscError(f"num_cpus {num_cpus}: a local Ray instance needs at least 1 CPU")
    # Both packages travel with the job (tasks unpickle functions from either).
    runtime_env = {"py_modules": [os.path.dirname(asc.__file__), os.path.dirname(os.path.abspath(__file__))],
                   "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}
    # WARNING in the workers too: Tune's per-checkpoint INFO lines would drown the search's progress.
    kwargs = dict(runtime_env=runtime_env, include_dashboard=False, logging_level="WARNING",
                  logging_config=ray.LoggingConfig(log_level="WARNING"))
    # ray_map re-raises the first failed task's error as one line; the failures of its siblings
    # (cancelled or already failed) are the same story and must not print tracebacks at exit.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    # Ray starts its workers at nice 15; beside any busy process they crawl. Only a
    # locally started instance reads this; a cluster's nodes set it at `ray start`.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise AscError(f"Ray cluster at {address!r}: {(str(exc) or type(exc).__name__).splitlines()[0]}") from None
    else:
        # Ray enables token authentication by default for a local instance and says so at WARNING
        # level on every start; that is the behaviour we want, so the notice is not news to print.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address="local", num_cpus=num_cpus, **kwargs)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on a ``host:port`` nobody listens on (Ray itself retries for minutes)."""
    if address == "auto" or "://" in address:
        return  # Ray resolves these itself
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not host or not port.isdigit():
        raise AscError(f"Ray address {address!r}: expected HOST:PORT of the head node's GCS (e.g. 10.0.0.1:6379), 'auto' or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise AscError(f"Ray cluster at {address!r} not reachable: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _stderr_into_ray_log(what: str):
    """While Ray shuts down after Ctrl-C, its C++ core worker may log in the driver's stderr about the
    tasks it is stopping ("task_manager.cc: Failed to push error to driver"): those lines go to a file
    in the Ray session's log folder instead, so that the command's own line stays the only one."""
    try:
        folder = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    except Exception:  # no session to write into: leave stderr alone
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with open(folder / f"asc-{what}.err", "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@ray.remote(num_cpus=1)
def _call(fn: Callable, item):
    return fn(item)


def ray_map(fn: Callable, items: Sequence, on_result: Callable | None = None, address: str | None = None,
            num_cpus: int | None = None) -> list:
    """``[fn(item) for item in items]`` as Ray tasks (one CPU each), results in the items' order.

    A task that failed on bad input re-raises its AscError here, so the user sees one line. Ray is
    started (or joined, with ``address``) on the first call, so that a build with nothing to do
    costs no Ray start-up.
    """
    init_ray(address, num_cpus)
    refs = [_call.remote(fn, item) for item in items]
    position = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                results[position[ref]] = ray.get(ref)
                if on_result:
                    on_result(results[position[ref]])
    except ray.exceptions.RayTaskError as exc:
        for ref in pending:  # the first failure is the story: its siblings are killed, not waited for
            ray.cancel(ref, force=True)
        if isinstance(exc.cause, AscError):
            raise AscError(str(exc.cause)) from None
        raise
    except KeyboardInterrupt:
        # Ctrl-C: stop the tasks before the caller removes the staging folder they write into. A
        # private local instance is shut down whole, synchronously: cancelling a running task raises
        # KeyboardInterrupt inside it, which can trip Ray's fatal check in the task receiver ("An
        # unexpected system state has occurred", ray-project/ray#61102 and #63663). On a cluster the
        # tasks are asked to stop; what they still write lands in a staging folder the next prepare sweeps.
        if address is None:
            with _stderr_into_ray_log("interrupt"):
                ray.shutdown()
        else:
            for ref in pending:
                ray.cancel(ref)
        raise
    return results


def prepare(data_dir: str | Path | Dataset, store: str | Path, configs: Sequence[FeatureConfig],
            address: str | None = None, num_cpus: int | None = None, shard_size: int = 32,
            progress: bool = True) -> BuildReport:
    """Build (or find up to date) one store per configuration for the dataset in ``data_dir`` (or the
    dataset already read from it).

    ``progress``: a bar on a terminal, a line every half minute in a log (``asc.progress``)."""
    dataset = data_dir if isinstance(data_dir, Dataset) else read_dataset(data_dir)
    map_fn = functools.partial(ray_map, address=address, num_cpus=num_cpus)
    bar = None

    def advance(clips: int) -> None:  # the bar appears with the first finished shard, i.e. only if there is work
        nonlocal bar
        if bar is None:
            bar = show_progress(len(dataset), "extracting", "clip", progress)
        bar.update(clips)

    try:
        return build_stores(dataset, configs, store, map_fn=map_fn, shard_size=shard_size, progress=advance)
    finally:
        if bar is not None:
            bar.close()


def format_report(report: BuildReport) -> str:
    lines = [f"{'store':<40}{'n_mels':>7}{'shape':>12}{'dtype':>9}  status"]
    for status, paths in (("built", report.built), ("up to date", report.up_to_date)):
        for path in paths:
            manifest = json.loads((Path(path) / MANIFEST).read_text())
            shape = "x".join(map(str, manifest["shape"]))
            if path in report.damaged:
                status = f"rebuilt: it was damaged ({report.damaged[path]})"
            lines.append(f"{Path(path).name:<40}{manifest['config']['n_mels']:>7}{shape:>12}{manifest['dtype']:>9}  {status}")
    if report.built:
        rate = report.clips / report.seconds if report.seconds else 0.0
        lines.append(f"extracted {report.clips} clips in {report.seconds:.1f} s ({rate:.1f} clips/s)")
    else:
        lines.append("nothing to do: every store is up to date with the audio")
    return "\n".join(lines)
