"""The search: Ray Tune runs the trials, Optuna proposes them, ASHA stops weak ones, MLflow records.

``run_search`` validates the space, checks the tracking URI, finds (or with ``data`` prepares) every
feature store the space can ask for (``search.stores``), creates the MLflow experiment and the search's
parent run, then fits a ``tune.Tuner`` and reports the trials (``search.report``). ``resume_search``
restores a search whose driver died from its folder (``STORAGE/NAME``): Tune's experiment state
(finished trials are not rerun, unfinished ones continue from their last epoch checkpoint) and the
Optuna study, which lives in ``optuna.db`` there.

Wiring, and the libraries' traps it avoids:
- metric and mode are given to the searcher and the scheduler, never also to TuneConfig (Tune
  refuses or silently prefers one of them);
- ASHA's time attribute is the epoch; a trial it stops is told to Optuna as PRUNED at the epoch it
  reached, with its intermediate values (Ray 2.60's OptunaSearch would tell COMPLETE with the
  low-budget value, which TPE then reads as a final one);
- a lost worker's or node's trial is retried from its last checkpoint (FailureConfig) on a fresh
  actor (actor reuse is off: a worker lost between two trials took the next trial down with it on
  the dead, cached actor), into the same MLflow run;
- Ray's own messages about lost workers go to the search's ``ray.log``; the console gets one line
  per fault (``search.console``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from asc.device_table import pct
from asc.errors import AscError, creatable_folder, write_atomic
from asc.models import xception_weights_file
from asc.train import code_version, source_fingerprint
from search.console import LOG_FILE, route_ray_messages
from search.prepare import init_ray
from search.report import distinct_line, report_results, trial_rows, ui_command
from search.schedulers import STATE_FILE as ASHA_STATE, PersistentASHA
from search.searcher import ACTIVE, STUDY_FILE, Searcher, make_sampler, study_storage
from search.space import Space, load_space
from search.stores import (cache_line, check_stores_unchanged, has_unseen_devices, resolve_stores, store_devices,
                           store_identity, training_devices)
from search.tracking import ACTIVE as TRACKERS, PENDING_FILE, RESUMING, TRIAL_TAG, MlflowTracker, RetryingClient, \
    check_new_experiment, check_tracking_uri, close_dangling_runs, ensure_runs_view, resume_tracking_uri, save_pending, \
    send_pending, send_unlogged, tracking_uri, start_search, trial_label, unlogged_trials
from search.trainable import run_trial
from search.warmstart import apply as apply_warm_start, check_warm_start_store, check_warm_start_stores, \
    read_warm_start, warm_start_experiments

SEARCH_FILE = "search.json"  # what `resume` needs: settings, stores, MLflow ids
SPACE_FILE = "space.yaml"  # the space as run (overrides applied)
DEFAULT_STORAGE = Path("runs")


@dataclass
class SearchSettings:
    space: str
    store: str
    name: str | None = None
    data: str | None = None
    num_samples: int | None = None
    max_concurrent: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    address: str | None = None
    mlflow_uri: str | None = None
    storage: str | None = None
    seed: int | None = None
    overrides: list = field(default_factory=list)
    warm_start: list = field(default_factory=list)  # MLflow experiments whose trials the study starts with
    # Where the Optuna study's SQLite file lives (default: the search's folder under --storage). On a
    # cluster whose --storage is an NFS share, a folder on the head's own disk: SQLite's locking is not
    # safe on NFS, and one process (the driver, on the head) writes the study.
    study_dir: str | None = None
    max_failures: int = 3  # retries of a lost trial (from its last checkpoint), in a row without a new epoch
    # Off, as Ray Tune's own default since 2024 (ray-project/ray#42951): with reuse, a worker killed as
    # one trial ended and the next began made the next trial fail twice on the same dead cached actor
    # and end FAILED. A fresh actor per trial costs about 10 s a trial against 1.4 s with reuse, on a busy
    # 2-core machine (python -m search bench-search; search/bench/README.md).
    reuse_actors: bool = False
    top: int = 10  # rows of the best-trials table


def _searcher_class():
    return Searcher


# --------------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------------
class Progress(Callback):
    """One line per trial-epoch (readable in a terminal and in a CI log alike), one per fault, and
    the retries a trial has left.

    ``--max-failures`` counts a trial's failures since its last new epoch, not in its whole life: a
    long trial on preemptible nodes may be lost many times, each time going on from a later checkpoint,
    and must not run out of tries while it makes progress. Tune counts every failure against the
    trial's limit (``Trial.should_recover``: failures so far <= ``trial.max_failures``) and has no such
    setting, so on each new epoch this raises the trial's own limit to its failures so far plus
    ``max_failures`` (Tune saves the limit with the trial: a resumed search keeps it). It is done here,
    in the callback a search has always had, so that a search saved by an earlier version (whose
    callbacks Tune unpickles on resume) counts so too."""

    def __init__(self, space: Space, devices: list[str], max_failures: int = 0, log: str = ""):
        self.space, self.devices, self.max_failures, self.log = space, devices, max_failures, log
        self._nodes: set | None = None
        self._nodes_checked = 0.0
        self._reached: dict[str, int] = {}  # trial id -> the furthest epoch it reported

    def _retry_limit(self, trial, result: dict) -> None:
        reached = self.__dict__.setdefault("_reached", {})  # a Progress pickled by an earlier version has none
        epoch = int(result.get("epoch", 0))
        if self.max_failures >= 0 and epoch > reached.get(trial.trial_id, 0):
            reached[trial.trial_id] = epoch
            trial.max_failures = trial.num_failures + self.max_failures

    def on_step_begin(self, iteration, trials, **info):
        """A node that leaves the cluster is one line (looked at every few seconds: it is a GCS call):
        lost (its trials retry elsewhere), or removed as planned (the autoscaler's idle node)."""
        if time.monotonic() - self._nodes_checked < 3:
            return
        self._nodes_checked = time.monotonic()
        nodes = {n["NodeID"]: n for n in ray.nodes()}
        alive = {node_id for node_id, n in nodes.items() if n["Alive"]}
        for node_id in sorted((self._nodes or set()) - alive):
            print(node_left_line(nodes.get(node_id, {"NodeManagerAddress": node_id}), self.log), flush=True)
        self._nodes = alive

    def _name(self, trial) -> str:
        return f"{trial_label(trial)} {self.space.describe(trial.config)}"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._retry_limit(trial, result)
        if result.get("diverged"):
            print(f"{self._name(trial):<44} diverged at epoch {result['diverged']}: {result.get('diverged_reason')}",
                  flush=True)
            return
        # the devices the chosen-on clips hold (held-out training locations hold no unseen device)
        cells = " ".join(f"{d.upper()} {pct(result.get(f'acc_{d}'), 5)}" for d in self.devices
                         if isinstance(result.get(f"acc_{d}"), float) and math.isfinite(result[f"acc_{d}"]))
        if self.space.objective.multi:
            obj = f"B&C {pct(result.get('sel_acc_bc'), 5)} |gap| {pct(result.get('objective_abs_gap'), 5)}"
        else:
            obj = f"objective {result.get('objective', math.nan):.3f}"
        # the figures in columns whatever the configuration's length: its description ends the line
        print(f"{trial_label(trial)} epoch {result['epoch']:>3}/{result['epochs']:<3} {cells} "
              f"B&C {pct(result.get('acc_bc'), 5)} gap {pct(result.get('device_gap'), 5)} | selected epoch "
              f"{result['best_epoch']:>3}: {obj} | {self.space.describe(trial.config)}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        how = ("finished" if r.get("epoch", 0) >= r.get("epochs", 0) else
               f"diverged at epoch {r['diverged']}: ended at epoch {r.get('epoch')}" if r.get("diverged") else
               f"stopped by ASHA at epoch {r.get('epoch')}")
        print(f"{self._name(trial):<44} {how}", flush=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        print(f"{self._name(trial):<44} {fault_line(trial, self.max_failures, self.log, final=False)}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"{self._name(trial):<44} FAILED for good: "
              f"{fault_line(trial, self.max_failures, self.log, final=True)}", flush=True)


def fault_line(trial, max_failures: int, log: str, final: bool) -> str:
    """What happened to a trial whose task failed, in one line: the worker or node it lost (from the
    error Tune recorded and the node its last result came from), which try this was, and where Ray's
    own report of it is."""
    text = ""
    if trial.error_file and os.path.isfile(trial.error_file):
        text = Path(trial.error_file).read_text(errors="replace").rsplit("Failure # ", 1)[-1]
    ip = (trial.last_result or {}).get("node_ip") or next(iter(re.findall(r"\bip: (\S+)", text)), None)
    where = f" on {ip}" if ip else ""
    if "its node has died" in text or "NodeDiedError" in text or (ip and not _node_alive(ip)):
        what = f"lost its node{where}"
    elif any(k in text for k in ("ActorDiedError", "worker process has died", "ActorUnavailableError",
                                  "is unavailable")):
        what = f"lost its worker{where}"
    else:
        last = [line for line in text.splitlines() if line.strip()]
        what = f"raised {last[-1].strip()[:200]}" if last else "failed"
    failures = trial.num_failures
    if max_failures < 0:
        count = f"failure {failures}, retried forever"
    else:  # since its last new epoch (Progress._retry_limit), and in all when that differs
        in_a_row = failures - max(trial.max_failures - max_failures, 0)
        count = (f"failure {in_a_row} in a row without a new epoch, {max_failures} "
                 f"retr{'y' if max_failures == 1 else 'ies'} allowed"
                 + (f", {failures} in all" if failures != in_a_row else ""))
    outcome = "no tries left" if final else "retrying from its last checkpoint"
    return f"{what} ({count}); {outcome} (Ray's report: {log})"


# Ray's NodeDeathInfo reasons (``ray.nodes()``' DeathReason) for a node that left as planned: stopped
# (``ray stop``), or drained by the autoscaler when idle (cluster.yaml's idle_timeout_minutes).
PLANNED_DEATHS = {1: "stopped", 4: "idle, removed by the autoscaler"}


def node_left_line(node: dict, log: str) -> str:
    """What a user reads when a node leaves the search's cluster: why, and what it costs."""
    ip = node.get("NodeManagerAddress", "?")
    why = (node.get("DeathReasonMessage") or "").strip().splitlines()
    if node.get("DeathReason") in PLANNED_DEATHS:
        return f"node {ip} left the cluster ({PLANNED_DEATHS[node['DeathReason']]})"
    preempted = " (preempted)" if node.get("DeathReason") == 3 else ""
    return (f"node {ip} lost{preempted}: Ray marked it dead{f' ({why[0][:120]})' if why else ''}; its trials retry "
            f"from their last checkpoints on the nodes left (Ray's report: {log})")


def _node_alive(ip: str) -> bool:
    """False when Ray has marked the node at ``ip`` dead (it may not have noticed yet: then True)."""
    states = [n["Alive"] for n in ray.nodes() if n.get("NodeManagerAddress") == ip]
    return any(states) or not states


# --------------------------------------------------------------------------------------------------
# Run and resume
# --------------------------------------------------------------------------------------------------
def _trainable(space: Space, stores: dict, cpus: float, gpus: float):
    return tune.with_resources(tune.with_parameters(run_trial, space=space, stores=stores), {"cpu": cpus, "gpu": gpus})


def run_search(settings: SearchSettings, command: str = "") -> dict:
    space = load_space(settings.space, settings.overrides)
    num_samples = space.num_samples if settings.num_samples is None else settings.num_samples
    max_concurrent = space.max_concurrent if settings.max_concurrent is None else settings.max_concurrent
    seed = space.seed if settings.seed is None else settings.seed
    for flag, value, ok in (("--num-samples", num_samples, num_samples >= 1),
                            ("--max-concurrent", max_concurrent, max_concurrent >= 1),
                            ("--cpus-per-trial", settings.cpus_per_trial, settings.cpus_per_trial > 0),
                            ("--gpus-per-trial", settings.gpus_per_trial, settings.gpus_per_trial >= 0)):
        if not ok:
            raise AscError(f"{flag} {value:g}: must be {'>= 0' if flag == '--gpus-per-trial' else '> 0'}")
    name = settings.name or space.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise AscError(f"--name {name!r}: letters, digits, '.', '_' and '-' only (it names a folder and an experiment)")
    storage = creatable_folder(Path(settings.storage or DEFAULT_STORAGE).resolve(), "--storage")
    search_dir = storage / name
    if (search_dir / SEARCH_FILE).exists():
        raise AscError(f"{search_dir}: a search named {name!r} exists; continue it with "
                       f"`python -m search resume {name} --storage {storage}` or give another --name")
    mlflow_uri = tracking_uri(settings.mlflow_uri, storage)
    if settings.warm_start:  # an earlier search's store must be there: nothing is created to find out
        check_warm_start_store(mlflow_uri, settings.warm_start)
    quiet_tune()
    check_tracking_uri(mlflow_uri, created=storage)
    check_new_experiment(mlflow_uri, name)
    earlier = None
    if settings.warm_start:  # what needs no store, before --data builds any
        earlier = warm_start_experiments(mlflow_uri, settings.warm_start, space)

    if space.protocol == "paper":
        choosers = "the epochs, ASHA and the sampler" if space.scheduler.name == "asha" else "the epochs and the sampler"
        print(f"note: protocol paper: {choosers} choose on the evaluation split, as the paper did; its figures are "
              "then no unbiased estimate (protocol validation holds out training locations)")
    distinct = space.distinct_points()
    if distinct is not None and num_samples > len(distinct):
        print(f"note: {space.path} holds {len(distinct)} distinct configuration(s): each is trained once "
              f"(num_samples {num_samples})")
    if not str(settings.address or "").startswith("ray://"):  # else the trials' machines are not this one
        for weights in space.weights_files():  # every trial would fail on it (cluster.yaml: one TORCH_HOME for all)
            xception_weights_file(weights)
    check = None
    if settings.warm_start:  # with --data: the stores it would build, before it builds them
        check = lambda names: check_warm_start_stores(settings.warm_start, earlier, names)  # noqa: E731
    stores = resolve_stores(space, settings.store, settings.data, settings.address, before_build=check)
    store_names = {key: store_identity(path) for key, path in stores.items()}
    warm = []
    if settings.warm_start:  # read and checked before anything is written
        warm, warm_line = read_warm_start(mlflow_uri, settings.warm_start, space, store_names, earlier)
        print(warm_line)  # before anything starts: a warm start that takes nothing is seen at once
    study_dir = settings.study_dir
    shared = network_filesystem(storage)
    if study_dir is None and shared:  # SQLite's locks do not hold there; the driver's own disk does
        study_dir = LOCAL_STUDIES
    if study_dir:
        study_dir = creatable_folder(Path(study_dir).expanduser().resolve() / name, "--study-dir")
    init_ray(settings.address)
    _check_resources(settings)  # the last check: what the Ray cluster holds
    for what, folder in (("--storage", search_dir), ("--study-dir", study_dir)):  # the first things written
        try:
            if folder:
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AscError(f"{what} {folder}: cannot create it ({exc.strerror or exc})") from None
    if shared and settings.study_dir is None:
        print(f"note: --storage {storage} is on {shared}, where SQLite's locking is not safe: the Optuna study "
              f"goes to this machine's disk, {study_dir} (--study-dir chooses; resume runs here)")
    route_ray_messages(search_dir)
    (search_dir / SPACE_FILE).write_text(space.text)
    local_artifacts = None if mlflow_uri.startswith(("http://", "https://")) else storage / "mlartifacts"
    options = {"num_samples": num_samples, "max_concurrent": max_concurrent, "seed": seed,
               "cpus_per_trial": settings.cpus_per_trial, "gpus_per_trial": settings.gpus_per_trial,
               "store": str(Path(settings.store).resolve()), "storage": str(storage)}
    experiment_id, parent_run = start_search(mlflow_uri, name, local_artifacts, space, command, options, store_names,
                                             has_unseen_devices(stores), training_devices(stores))
    info = {"name": name, "space_path": space.path, "stores": stores, "mlflow_uri": mlflow_uri,
            "experiment_id": experiment_id, "parent_run_id": parent_run, "address": settings.address,
            "command": command, **options, "max_failures": settings.max_failures,
            "reuse_actors": settings.reuse_actors, "top": settings.top, "store_names": store_names,
            **trained_with(),
            "warm_start": list(settings.warm_start),
            "study_dir": str(study_dir) if study_dir else None}
    write_atomic(search_dir / SEARCH_FILE, json.dumps(info, indent=1))
    tuner = _new_tuner(space, info, storage, warm)
    return _fit_and_report(tuner, space, info, search_dir)


LOCAL_STUDIES = "~/asc-studies"  # a study's folder when --storage is a network file system (cluster.yaml's too)
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "glusterfs", "ceph", "fuse.sshfs",
                       "fuse.s3fs", "fuse.gcsfuse", "fuse.glusterfs", "fuse.cephfs", "9p")


def network_filesystem(path: Path, mounts: str | None = None) -> str | None:
    """The type of the network file system ``path`` lies on (``nfs4``), or None for a local disk (or
    where the mount table cannot be read). ``mounts``: the text of ``/proc/mounts`` (read when None)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    path = Path(path).resolve()
    best, kind = None, None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (path == point or point in path.parents) and (best is None or len(point.parts) > len(best.parts)):
            best, kind = point, fields[2]
    return kind if kind in NETWORK_FILESYSTEMS else None


def _check_resources(settings: SearchSettings) -> None:
    """A trial that asks for more than the machine has would wait forever: refuse it on the local
    instance. A cluster's autoscaler may still add the nodes, so there it is a note."""
    total = ray.cluster_resources()
    for flag, key, asked in (("--gpus-per-trial", "GPU", settings.gpus_per_trial),
                             ("--cpus-per-trial", "CPU", settings.cpus_per_trial)):
        if asked > 0 and total.get(key, 0) < asked:
            message = f"{flag} {asked:g}: the Ray cluster has {total.get(key, 0):g} {key}s now"
            if settings.address is None:
                raise AscError(message)
            print(f"note: {message}; trials wait until the autoscaler adds nodes that have them")
    if settings.address is not None and settings.storage is None:
        print("note: --storage defaults to ./runs on this machine; trials on other nodes need a shared path "
              "(NFS) to checkpoint to and resume from")


def quiet_tune() -> None:
    """Tune's own console output off (the Progress callback prints a line per trial-epoch instead),
    and the libraries' INFO chatter (table creation, study creation, pickle notices) with it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # "pickle needs caution": we load our own
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0
    # A snapshot of the experiment state after every epoch checkpoint is what lets `resume` lose at
    # most one epoch; Tune warns about it as a bottleneck, which at epochs of seconds it is not.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _new_tuner(space: Space, info: dict, storage: Path, warm: list = ()):
    objective = space.objective
    metric = objective.metrics if objective.multi else objective.metrics[0]
    mode = objective.modes if objective.multi else objective.modes[0]
    searcher = _searcher_class()(space=space, metric=metric, mode=mode, sampler=make_sampler(space, info["seed"], info["num_samples"]),
                                 study_name=info["name"], storage=study_storage(study_folder(info, storage / info["name"])),
                                 seed=info["seed"])
    if warm:
        apply_warm_start(searcher, warm)
    searcher = ConcurrencyLimiter(searcher, max_concurrent=info["max_concurrent"])
    if space.scheduler.name == "asha":
        scheduler = PersistentASHA(time_attr="epoch", metric=metric, mode=mode, max_t=space.scheduler.max_t,
                                   grace_period=space.scheduler.grace_period,
                                   reduction_factor=space.scheduler.reduction_factor,
                                   state_file=str(study_folder(info, storage / info["name"]) / ASHA_STATE),
                                   noise_z=space.scheduler.noise_z)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        _trainable(space, info["stores"], info["cpus_per_trial"], info["gpus_per_trial"]),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=info["num_samples"],
                                    reuse_actors=info["reuse_actors"], trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=info["name"], storage_path=str(storage), verbose=0,
            callbacks=_callbacks(space, info),
            failure_config=tune.FailureConfig(max_failures=info["max_failures"]),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))


def trial_dirname(trial) -> str:
    """``t007_<trial id>``: the run's label first, instead of Tune's folder named after every parameter."""
    return f"{trial_label(trial)}_{trial.trial_id}"


def _callbacks(space: Space, info: dict) -> list:
    tracker = MlflowTracker(info["mlflow_uri"], info["experiment_id"], info["parent_run_id"], info["name"], space,
                            info["stores"], info.get("store_names"))
    log = Path(info["storage"]) / info["name"] / LOG_FILE
    return [tracker, Progress(space, store_devices(info["stores"]), info.get("max_failures", 3), str(log))]


def resume_search(name: str, storage: str | None = None, address: str | None = None,
                  mlflow_uri: str | None = None, instead: str | None = None) -> dict:
    """Continue the search ``name`` whose driver died (or was stopped). ``mlflow_uri``: the store it
    ran with, at the address it has now (:func:`~search.tracking.resume_tracking_uri`); ``instead``:
    what a refusal under other code advises besides that code (:func:`check_code_unchanged`)."""
    storage_path = Path(storage or DEFAULT_STORAGE).resolve()
    search_dir = storage_path / name
    if not (search_dir / SEARCH_FILE).is_file():
        raise AscError(f"{search_dir}: no search named {name!r} here (no {SEARCH_FILE}); "
                       "give the --storage it was started with")
    try:
        info = json.loads((search_dir / SEARCH_FILE).read_text())
        missing = [k for k in ("name", "stores", "mlflow_uri", "experiment_id", "parent_run_id", "storage",
                               "num_samples", "max_concurrent", "seed", "cpus_per_trial", "gpus_per_trial")
                   if k not in info]
    except (OSError, ValueError) as exc:
        raise AscError(f"{search_dir / SEARCH_FILE}: unreadable ({exc}); the search cannot be resumed") from None
    if missing:
        raise AscError(f"{search_dir / SEARCH_FILE}: lacks {', '.join(missing)}; the search cannot be resumed")
    info["storage"] = str(storage_path)  # where it is now (the folder may have moved)
    space = load_space(search_dir / SPACE_FILE)
    uri, uri_line = resume_tracking_uri(info["mlflow_uri"], mlflow_uri, info["experiment_id"], info["parent_run_id"])
    RESUMING["study_dir"] = study_folder(info, search_dir)
    if not (RESUMING["study_dir"] / STUDY_FILE).is_file():
        raise AscError(f"{RESUMING['study_dir'] / STUDY_FILE}: the search's Optuna study is not here (on a cluster "
                       "it lives on the disk of the machine that ran the driver: resume there)")
    if not tune.Tuner.can_restore(str(search_dir)):
        raise AscError(f"{search_dir}: Tune saved no experiment state before the driver stopped; start it again "
                       "with another --name")
    check_stores_unchanged(info, search_dir / SEARCH_FILE)
    check_code_unchanged(info, search_dir / SEARCH_FILE, instead)
    if uri_line:
        print(uri_line)
    if uri != info["mlflow_uri"]:  # the same store at a new address: the search's runs go on there
        write_atomic(search_dir / SEARCH_FILE,
                     json.dumps({**json.loads((search_dir / SEARCH_FILE).read_text()), "mlflow_uri": uri}, indent=1))
        info["mlflow_uri"] = uri
    RESUMING["mlflow_uri"] = uri  # for the tracker, unpickled from the experiment state with the old one
    RESUMING["tune_trials"] = saved_trial_ids(search_dir)  # for the searcher: the study's trials Tune holds
    left = send_pending(info["mlflow_uri"], search_dir)  # what a blinking server missed last time
    if left:
        print(f"warning: {left} kept MLflow write(s) still cannot reach {info['mlflow_uri']}")
    send_unlogged(info["mlflow_uri"], search_dir)  # trials' models it could not take then
    ensure_runs_view(uri, info["experiment_id"], space, has_unseen_devices(info["stores"]),
                     training_devices(info["stores"]))
    init_ray(address or info.get("address"))
    route_ray_messages(search_dir)
    print(f"resuming search {name!r} from {search_dir}")
    tuner = tune.Tuner.restore(str(search_dir), trainable=_trainable(space, info["stores"], info["cpus_per_trial"],
                                                                     info["gpus_per_trial"]),
                               resume_unfinished=True, resume_errored=False)
    return _fit_and_report(tuner, space, info, search_dir)


# The search's modules that decide what a trial trains and reports (the space's mapping of parameters
# to a training configuration, the objectives, the trainable's results)
TRIAL_MODULES = ("space.py", "objectives.py", "trainable.py")


def trained_with() -> dict:
    """What a trial's results depend on beyond its configuration and store: the ``asc`` package's source
    (its fingerprint, as every checkpoint holds it), the search's modules that make a trial's results,
    and torch's version (its kernels may sum in another order)."""
    search_code = source_fingerprint(Path(__file__).parent / name for name in TRIAL_MODULES)
    return {"asc_code": code_version(), "search_code": search_code, "torch": torch.__version__}


def check_code_unchanged(info: dict, info_file: Path, instead: str | None = None) -> None:
    """Refuse to resume a search under other training code than it ran with. Its unfinished trials
    could not continue from their checkpoints (written by that code); they would start again from their
    first epoch under this code, while MLflow, Optuna and ASHA keep the epochs the earlier code
    reported: one record of two versions' results. (A search saved before this was recorded: not
    checked.) ``instead``: what to do other than resuming with that code (default: a new search)."""
    now = trained_with()
    differs = [f"{what} {info[key]} then, {now[key]} now" for key, what in (
        ("asc_code", "asc source"), ("search_code", "search's trial modules"), ("torch", "torch"))
        if key in info and info[key] != now[key]]
    new_search = f"start a new search (--warm-start {info['name']} takes its finished trials)"
    if differs:
        raise AscError(f"{info_file}: the search ran with other training code ({'; '.join(differs)}); resuming "
                       "would mix two versions' results in its trials' records. Resume with the code it ran with, "
                       f"or {instead or new_search}")


def saved_trial_ids(search_dir: Path) -> set[str] | None:
    """The trial ids in Tune's newest saved experiment state (the one ``Tuner.restore`` resumes: the
    file names carry its time), or None where it cannot be read."""
    states = sorted(search_dir.glob("experiment_state-*.json"))
    try:
        return {json.loads(state)["trial_id"] for state, _ in json.loads(states[-1].read_text())["trial_data"]}
    except (IndexError, OSError, ValueError, KeyError, TypeError):
        return None


def study_folder(info: dict, search_dir: Path) -> Path:
    """The folder of a search's Optuna study: ``--study-dir`` if it ran with one, else its folder."""
    return Path(info["study_dir"]) if info.get("study_dir") else Path(search_dir)


# --------------------------------------------------------------------------------------------------
# The end of a search: interrupted or done, the study closed, the report (search.report), the summary
# --------------------------------------------------------------------------------------------------
def _fit_and_report(tuner, space: Space, info: dict, search_dir: Path) -> dict:
    quiet_tune()
    start = time.perf_counter()
    note = ("ASHA is off: it is single-objective and cannot stop trials on a Pareto pair; every trial runs "
            "its full epochs" if space.objective.multi else "")
    if note:
        print(f"note: {note}")
    client = RetryingClient(info["mlflow_uri"])
    parent = info["parent_run_id"]
    resume = f"python -m search resume {info['name']} --storage {info['storage']}"
    try:
        results = tuner.fit()
    except BaseException:  # a crash of the driver's own: leave nothing RUNNING, say how to continue
        tracker = TRACKERS.get("tracker")
        if tracker is not None and tracker._client is not None:  # kept writes, for `resume` to send
            save_pending([tracker.client], search_dir)
        close_dangling_runs(info["mlflow_uri"], info["experiment_id"], parent, {})
        client.set_terminated(parent, "KILLED")
        print(f"the search stopped; continue it with `{resume}`", file=sys.stderr)
        raise
    tracker = TRACKERS.get("tracker")
    if tracker is not None and tracker._client is not None:  # writes a blinking server has not taken yet
        left = tracker.client.flush()
        save_pending([tracker.client], search_dir)
        if left:
            print(f"warning: {left} MLflow write(s) could not reach {info['mlflow_uri']}; they are kept in "
                  f"{search_dir / PENDING_FILE} and `{resume}` writes them", file=sys.stderr)
    tune_trials = {t.trial_id: (t.status, t.checkpoint) for t in results._experiment_analysis.trials}
    unfinished = _unfinished(search_dir, info, space, tune_trials)
    if unfinished:  # Ctrl-C: Tune saved its state and returned; the study and the runs stay resumable
        tune_trials = {tid: ("" if tid in unfinished else status, ckpt) for tid, (status, ckpt) in tune_trials.items()}
        close_dangling_runs(info["mlflow_uri"], info["experiment_id"], parent, tune_trials)
        client.set_terminated(parent, "KILLED")
        raise AscError(f"search {info['name']!r} interrupted with {len(unfinished)} unfinished trial(s); "
                       f"continue it with `{resume}`")
    trials = trial_rows(results, space)
    closed = close_dangling_runs(info["mlflow_uri"], info["experiment_id"], parent, tune_trials)
    study = _finish_study(study_folder(info, search_dir), info["name"])
    front, counts = report_results(client, info, space, trials, study, store_devices(info["stores"]), note)
    client.set_terminated(parent, "FAILED" if counts["failed"] == len(trials) and trials else "FINISHED")
    left = client.flush()
    save_pending([c for c in (client, tracker.client if tracker and tracker._client else None) if c], search_dir)
    if left:
        print(f"warning: {left} MLflow write(s) about the search's run could not reach {info['mlflow_uri']}; "
              f"`{resume}` writes them", file=sys.stderr)
    print(f"\n{len(trials)} trials: {counts['finished']} finished, {counts['stopped']} stopped by ASHA, "
          + (f"{counts['diverged']} diverged, " if counts["diverged"] else "")
          + f"{counts['failed']} failed; {closed} dangling MLflow run(s) closed; {time.perf_counter() - start:.0f} s")
    searcher = ACTIVE.get("searcher")
    if searcher is not None and (searcher.repeats or searcher.finished):
        print(distinct_line(space, searcher, info["num_samples"], len(trials)))
    if searcher is not None and getattr(searcher, "orphans", 0):
        print(f"{searcher.orphans} Optuna trial(s) asked before the driver died, never recorded by Tune: closed "
              "in the study as FAIL (user attribute orphan), their configurations free to be proposed again")
    print(f"browse them: {ui_command(info['mlflow_uri'], info['experiment_id'])}")
    caches = cache_line(info["stores"])
    if caches:
        print(caches)
    unlogged = [record["label"] for _, record in unlogged_trials(search_dir)]
    if unlogged:
        print(f"warning: {len(unlogged)} trial(s) have no model in MLflow ({', '.join(unlogged)}: tagged "
              f"artifact_error); `{resume}` logs them from their checkpoints", file=sys.stderr)
    failed = [t["label"] for t in trials if t["state"] == "failed"]
    if failed:  # the last line, and a non-zero exit (search.__main__): a lost trial is not a result
        most = info.get("max_failures", 3)
        print(f"{len(failed)} trial(s) failed for good"
              + (f", {most + 1} failures in a row without a new epoch" if most >= 0 else "") + ": "
              f"{', '.join(sorted(failed))} (their errors: {search_dir}/t*/error.txt; Ray's: {search_dir / LOG_FILE})",
              file=sys.stderr)
    return {"trials": trials, "front": front, "experiment_id": info["experiment_id"], "parent_run_id": parent,
            "failed": failed}


def _unfinished(search_dir: Path, info: dict, space: Space, tune_trials: dict) -> list[str]:
    """The trials a Ctrl-C left unfinished. Tune marks them TERMINATED as it stops, so the searcher is
    the judge: it tells Optuna about every trial that ended (finished, stopped by ASHA, failed), and a
    trial it has not told about is still RUNNING in the study. A search stopped between two trials
    has fewer trials than it asked for (a grid or points space: fewer than its points)."""
    study = optuna.load_study(study_name=info["name"], storage=study_storage(study_folder(info, search_dir)))
    running = {t.user_attrs.get(TRIAL_TAG) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    unfinished = [tid for tid in tune_trials if tid in running]
    searcher = ACTIVE.get("searcher")
    if not unfinished and len(tune_trials) < info["num_samples"] and not (searcher and searcher.finished):
        unfinished = ["(not started)"]
    return unfinished


def _finish_study(search_dir: Path, name: str):
    """The study as the search left it; trials the driver asked for but never ran (it died between
    asking and starting them) are marked FAIL so that nothing stays RUNNING."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=study_storage(search_dir))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return study
