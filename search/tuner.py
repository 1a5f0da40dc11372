"""The search: Ray Tune runs the trials, Optuna proposes them, ASHA stops weak ones, MLflow records.

``run_search`` validates the space, checks the tracking URI, finds (or with ``data`` prepares) every
feature store the space can ask for, creates the MLflow experiment and the search's parent run, then
fits a ``tune.Tuner``. ``resume_search`` restores a search whose driver died from its folder
(``STORAGE/NAME``): Tune's experiment state (finished trials are not rerun, unfinished ones continue
from their last epoch checkpoint) and the Optuna study, which lives in ``optuna.db`` there.

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
import math
import os
import re
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from asc.errors import AscError
from search.console import LOG_FILE, route_ray_messages
from search.schedulers import STATE_FILE as ASHA_STATE, PersistentASHA
from search.searcher import ACTIVE, DUPLICATE_ATTR, RESUMING, STUDY_FILE, Searcher, make_sampler, study_storage
from asc.enhance import Enhancement, parse_composition
from search.space import CONDITIONAL, Space, load_space
from search.tracking import ACTIVE as TRACKERS, PENDING_FILE, TRIAL_TAG, MlflowTracker, RetryingClient, \
    check_tracking_uri, close_dangling_runs, save_pending, send_pending, tracking_uri, \
    start_search, trial_label

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
    max_failures: int = 3  # retries of a trial whose worker died, each from its last checkpoint
    # Off, as Ray Tune's own default since 2024 (ray-project/ray#42951): with reuse, a worker killed as
    # one trial ended and the next began made the next trial fail twice on the same dead cached actor
    # and end FAILED. A fresh actor per trial costs a few seconds a trial (search/bench/search.py).
    reuse_actors: bool = False
    top: int = 10  # rows of the best-trials table


def _searcher_class():
    return Searcher


# --------------------------------------------------------------------------------------------------
# Stores
# --------------------------------------------------------------------------------------------------
def resolve_stores(space: Space, store_root: str, data: str | None = None, address: str | None = None) -> dict[str, str]:
    """feature-config key -> store folder, for every store a trial of ``space`` can ask for.

    With ``data`` the stores are prepared first (over the Ray cluster at ``address``); without it a
    missing one is an error naming the ``prepare`` command that makes it.
    """
    from asc.store import MANIFEST, FeatureStore, current_stores, read_manifest

    configs = space.feature_configs()
    if str(store_root).startswith(("s3://", "gs://")):
        raise AscError(f"--store {store_root}: a file system folder (local or NFS), not an object store")
    if data is not None:
        from search.prepare import format_report, prepare

        print(f"preparing the {len(configs)} feature store(s) the space needs from {data}")
        print(format_report(prepare(data, store_root, configs, address=address)))
    if not Path(store_root).is_dir():
        raise AscError(f"--store {store_root}: no such folder (make the stores with `python -m search prepare "
                       "DATA_DIR --store ...`, or pass --data DATA_DIR)")
    current = current_stores(store_root)
    stores, missing = {}, []
    for config in configs:
        matches = [path for path, manifest in current if manifest.get("config") == config.to_dict()]
        if data is not None:  # of several datasets in one root, the one just prepared
            matches = [p for p in matches if Path(read_manifest(p / MANIFEST)["dataset"]["root"]) == Path(data).resolve()] or matches
        if not matches:
            missing.append(config)
            continue
        if len(matches) > 1:
            raise AscError(f"{store_root}: several datasets have a store for n_mels={config.n_mels} "
                           f"({', '.join(p.name for p in matches)}): give a store root that holds one dataset's")
        stores[config.key()] = str(matches[0].resolve())
    if missing:
        what = ", ".join(f"n_mels={c.n_mels}{' with spectrum correction' if c.spectrum_correction else ''}"
                         for c in missing)
        commands = " and ".join(f"`{prepare_command(group, store_root)}`" for group in
                                ([c for c in missing if not c.spectrum_correction], [c for c in missing if c.spectrum_correction])
                                if group)
        raise AscError(f"{store_root}: no feature store for {what}; make them with {commands} (or pass --data DATA_DIR)")
    space.check_frames(min(FeatureStore(p).shape[1] for p in stores.values()))
    _check_selection_devices(space, next(iter(stores.values())))
    return stores


NEEDS_OTHER_DEVICES = ("metric_b", "acc_bc", "gap_penalized", "pareto")  # acc_bc is part of each


def _check_selection_devices(space: Space, store: str) -> None:
    """An objective on B&C needs B or C clips among the clips each protocol selects on; without
    them every trial's objective is NaN (ASHA cannot stop such trials, Optuna records them FAIL)."""
    from asc import REFERENCE_DEVICE
    from asc.store import FeatureStore
    from asc.train import split_indices

    if space.objective.name not in NEEDS_OTHER_DEVICES:
        return
    clips = FeatureStore(store).clips
    protocol = space.protocol
    if space.objective.name == "acc_unseen":
        config = space.train_config({**space.fixed, "protocol": protocol}, store)
        _, select, _ = split_indices(clips, config)
        seen = {c.device for c in clips if c.split == "train"}
        if not {clips[i].device for i in select} - seen:
            raise AscError(f"{space.path}: objective: acc_unseen needs clips of devices unseen in training among the "
                           f"selection clips, but the {protocol} protocol selects on devices "
                           f"{', '.join(sorted({clips[i].device.upper() for i in select}))} only, all seen in "
                           f"training ({store}); the evaluation split holds them: protocol paper")
        return
    config = space.train_config({**space.fixed, "protocol": protocol}, store)
    _, select, _ = split_indices(clips, config)
    devices = sorted({clips[i].device for i in select})
    both = space.objective.name != "acc_bc"  # Metric B and what is built on it need A clips too
    if not set(devices) - {REFERENCE_DEVICE} or (both and REFERENCE_DEVICE not in devices):
        raise AscError(f"{space.path}: objective: {space.objective.name} needs clips of devices other than "
                       f"{REFERENCE_DEVICE.upper()}{' and of ' + REFERENCE_DEVICE.upper() if both else ''} among the "
                       f"selection clips, but the {protocol} protocol selects "
                       f"on {len(select)} clips of device {', '.join(d.upper() for d in devices)} only ({store})")


def prepare_command(configs: list, store_root) -> str:
    """The `prepare` command line that makes the stores of ``configs`` (which differ only in n_mels)."""
    from asc.features import FeatureConfig

    default, config = FeatureConfig(), configs[0]
    flags = [f"--n-mels {' '.join(str(c.n_mels) for c in configs)}"]
    for key, flag in (("sample_rate", "--sample-rate"), ("n_fft", "--n-fft"), ("hop_length", "--hop-length"),
                      ("fmin", "--fmin"), ("fmax", "--fmax"), ("power", "--power"), ("dtype", "--dtype"),
                      ("pad_mode", "--pad-mode")):
        if getattr(config, key) != getattr(default, key):
            flags.append(f"{flag} {getattr(config, key):g}" if isinstance(getattr(config, key), float)
                         else f"{flag} {getattr(config, key)}")
    for key, flag in (("spectrum_correction", "--spectrum-correction"), ("resample", "--resample")):
        if getattr(config, key):
            flags.append(flag)
    if not config.drop_last_frame:
        flags.append("--keep-last-frame")
    return f"python -m search prepare DATA_DIR --store {store_root} {' '.join(flags)}"


# --------------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------------
def _progress_class():
    from ray.tune import Callback

    class Progress(Callback):
        """One line per trial-epoch (readable in a terminal and in a CI log alike)."""

        def __init__(self, space: Space, devices: list[str], max_failures: int = 0, log: str = ""):
            self.space, self.devices, self.max_failures, self.log = space, devices, max_failures, log
            self._nodes: set | None = None
            self._nodes_checked = 0.0

        def on_step_begin(self, iteration, trials, **info):
            """A node Ray marks dead is one line (looked at every few seconds: it is a GCS call)."""
            import ray

            if time.monotonic() - self._nodes_checked < 3:
                return
            self._nodes_checked = time.monotonic()
            alive = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
            for ip in sorted((self._nodes or set()) - alive):
                print(f"node {ip} lost: Ray marked it dead; its trials retry from their last checkpoints on the "
                      f"nodes left (Ray's report: {self.log})", flush=True)
            self._nodes = alive

        def _name(self, trial) -> str:
            return f"{trial_label(trial)} {self.space.describe(trial.config)}"

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("diverged"):
                print(f"{self._name(trial):<44} diverged at epoch {result['diverged']}: {result.get('diverged_reason')}",
                      flush=True)
                return
            cells = " ".join(f"{d.upper()} {_pct(result.get(f'acc_{d}'))}" for d in self.devices)
            if self.space.objective.multi:
                obj = f"B&C {_pct(result.get('sel_acc_bc'))} |gap| {_pct(result.get('objective_abs_gap'))}"
            else:
                obj = f"objective {result.get('objective', math.nan):.3f}"
            print(f"{self._name(trial):<44} epoch {result['epoch']:>3}/{result['epochs']:<3} {cells} "
                  f"B&C {_pct(result.get('acc_bc'))} gap {_pct(result.get('device_gap'))} | selected epoch "
                  f"{result['best_epoch']}: {obj}", flush=True)

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

    return Progress


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
    tries = "" if max_failures < 0 else f" of {max_failures + 1}"
    outcome = "no tries left" if final else "retrying from its last checkpoint"
    return f"{what} (try {trial.num_failures}{tries}); {outcome} (Ray's report: {log})"


def _node_alive(ip: str) -> bool:
    """False when Ray has marked the node at ``ip`` dead (it may not have noticed yet: then True)."""
    import ray

    states = [n["Alive"] for n in ray.nodes() if n.get("NodeManagerAddress") == ip]
    return any(states) or not states


def _pct(value) -> str:
    return "  -  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:5.1f}"


# --------------------------------------------------------------------------------------------------
# Run and resume
# --------------------------------------------------------------------------------------------------
def _trainable(space: Space, stores: dict, cpus: float, gpus: float):
    from ray import tune

    from search.trainable import run_trial

    return tune.with_resources(tune.with_parameters(run_trial, space=space, stores=stores), {"cpu": cpus, "gpu": gpus})


def _devices(stores: dict) -> list[str]:
    from asc.store import MANIFEST, read_manifest

    return list(read_manifest(Path(next(iter(stores.values()))) / MANIFEST)["dataset"]["devices"])


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
    storage = Path(settings.storage or DEFAULT_STORAGE).resolve()
    search_dir = storage / name
    if (search_dir / SEARCH_FILE).exists():
        raise AscError(f"{search_dir}: a search named {name!r} exists; continue it with "
                       f"`python -m search resume {name} --storage {storage}` or give another --name")
    try:
        storage.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AscError(f"--storage {storage}: cannot create it ({exc.strerror or exc})") from None
    _quiet_tune()
    mlflow_uri = tracking_uri(settings.mlflow_uri, storage)
    check_tracking_uri(mlflow_uri)

    from search.prepare import init_ray

    distinct = space.distinct_points()
    if distinct is not None and num_samples > len(distinct):
        print(f"note: {space.path} holds {len(distinct)} distinct configuration(s): each is trained once "
              f"(num_samples {num_samples})")
    stores = resolve_stores(space, settings.store, settings.data, settings.address)
    store_names = {key: store_identity(path) for key, path in stores.items()}
    warm, warm_line = [], ""
    if settings.warm_start:  # read and checked before anything is written
        from search.warmstart import read_warm_start

        warm, warm_line = read_warm_start(mlflow_uri, settings.warm_start, space, store_names)
    init_ray(settings.address)
    _check_resources(settings)
    search_dir.mkdir(parents=True, exist_ok=True)
    if settings.study_dir:
        try:
            (Path(settings.study_dir).expanduser().resolve() / name).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AscError(f"--study-dir {settings.study_dir}: cannot create it ({exc.strerror or exc})") from None
    route_ray_messages(search_dir)
    (search_dir / SPACE_FILE).write_text(space.text)
    local_artifacts = None if mlflow_uri.startswith(("http://", "https://")) else storage / "mlartifacts"
    options = {"num_samples": num_samples, "max_concurrent": max_concurrent, "seed": seed,
               "cpus_per_trial": settings.cpus_per_trial, "gpus_per_trial": settings.gpus_per_trial,
               "store": str(Path(settings.store).resolve()), "storage": str(storage)}
    experiment_id, parent_run = start_search(mlflow_uri, name, local_artifacts, space, command, options, store_names)
    info = {"name": name, "space_path": space.path, "stores": stores, "mlflow_uri": mlflow_uri,
            "experiment_id": experiment_id, "parent_run_id": parent_run, "address": settings.address,
            "command": command, **options, "max_failures": settings.max_failures,
            "reuse_actors": settings.reuse_actors, "top": settings.top, "store_names": store_names,
            "warm_start": list(settings.warm_start),
            "study_dir": str(Path(settings.study_dir).expanduser().resolve() / name) if settings.study_dir else None}
    _write_json(search_dir / SEARCH_FILE, info)
    tuner = _new_tuner(space, info, storage, warm)
    if warm_line:
        print(warm_line)
    return _fit_and_report(tuner, space, info, search_dir)


def _check_resources(settings: SearchSettings) -> None:
    """A trial that asks for more than the machine has would wait forever: refuse it on the local
    instance. A cluster's autoscaler may still add the nodes, so there it is a note."""
    import ray

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


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _quiet_tune() -> None:
    """Tune's own console output off (the Progress callback prints a line per trial-epoch instead),
    and the libraries' INFO chatter (table creation, study creation, pickle notices) with it."""
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # "pickle needs caution": we load our own
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0
    # A snapshot of the experiment state after every epoch checkpoint is what lets `resume` lose at
    # most one epoch; Tune warns about it as a bottleneck, which at epochs of seconds it is not.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _new_tuner(space: Space, info: dict, storage: Path, warm: list = ()):
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    objective = space.objective
    metric = objective.metrics if objective.multi else objective.metrics[0]
    mode = objective.modes if objective.multi else objective.modes[0]
    searcher = _searcher_class()(space=space, metric=metric, mode=mode, sampler=make_sampler(space, info["seed"], info["num_samples"]),
                                 study_name=info["name"], storage=study_storage(study_folder(info, storage / info["name"])),
                                 seed=info["seed"])
    if warm:
        from search.warmstart import apply

        apply(searcher, warm)
    searcher = ConcurrencyLimiter(searcher, max_concurrent=info["max_concurrent"])
    if space.scheduler.name == "asha":
        scheduler = PersistentASHA(time_attr="epoch", metric=metric, mode=mode, max_t=space.scheduler.max_t,
                                   grace_period=space.scheduler.grace_period,
                                   reduction_factor=space.scheduler.reduction_factor,
                                   state_file=str(storage / info["name"] / ASHA_STATE), noise_z=space.scheduler.noise_z)
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
    return [tracker, _progress_class()(space, _devices(info["stores"]), info.get("max_failures", 3), str(log))]


def resume_search(name: str, storage: str | None = None, address: str | None = None) -> dict:
    """Continue the search ``name`` whose driver died (or was stopped)."""
    from ray import tune

    from search.prepare import init_ray

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
    check_tracking_uri(info["mlflow_uri"])
    RESUMING["search_dir"] = study_folder(info, search_dir)
    if not (RESUMING["search_dir"] / STUDY_FILE).is_file():
        raise AscError(f"{RESUMING['search_dir'] / STUDY_FILE}: the search's Optuna study is not here (on a cluster "
                       "it lives on the disk of the machine that ran the driver: resume there)")
    if not tune.Tuner.can_restore(str(search_dir)):
        raise AscError(f"{search_dir}: Tune saved no experiment state before the driver stopped; start it again "
                       "with another --name")
    _check_stores_unchanged(info, search_dir)
    left = send_pending(info["mlflow_uri"], search_dir)  # what a blinking server missed last time
    if left:
        print(f"warning: {left} kept MLflow write(s) still cannot reach {info['mlflow_uri']}")
    init_ray(address or info.get("address"))
    route_ray_messages(search_dir)
    print(f"resuming search {name!r} from {search_dir}")
    tuner = tune.Tuner.restore(str(search_dir), trainable=_trainable(space, info["stores"], info["cpus_per_trial"],
                                                                     info["gpus_per_trial"]),
                               resume_unfinished=True, resume_errored=False)
    return _fit_and_report(tuner, space, info, search_dir)


def study_folder(info: dict, search_dir: Path) -> Path:
    """The folder of a search's Optuna study: ``--study-dir`` if it ran with one, else its folder."""
    return Path(info["study_dir"]) if info.get("study_dir") else Path(search_dir)


def store_identity(path: str) -> str:
    """The name a store's manifest gives it: a hash of its feature configuration and of the audio it
    was extracted from (``asc.store.store_name``), the same after a rebuild of the same audio."""
    from asc.store import MANIFEST, read_manifest

    return read_manifest(Path(path) / MANIFEST)["name"]


def _check_stores_unchanged(info: dict, search_dir: Path) -> None:
    """Refuse to resume a search whose trials would read other features than its earlier trials did:
    a store folder gone, damaged, or holding another store (other audio or settings) since it started."""
    from asc.store import store_damage

    for key, path in info["stores"].items():
        try:
            now = store_identity(path)
        except AscError:
            now = None
        recorded = info.get("store_names", {}).get(key, now)
        damage = store_damage(Path(path)) if now is not None else None
        if now is None or now != recorded or damage:
            what = ("is gone" if now is None else f"holds store {now}, not {recorded}" if now != recorded else
                    f"is damaged ({damage})")
            raise AscError(f"{path}: the feature store this search's trials read {what}; resuming would train "
                           f"its remaining trials on other features than the finished ones ({search_dir / SEARCH_FILE}). "
                           "Restore the store (`python -m search prepare` on the same audio rebuilds it), or start "
                           "a new search")


# --------------------------------------------------------------------------------------------------
# The end of a search: summary table, Pareto front, plots, MLflow parent run
# --------------------------------------------------------------------------------------------------
def _fit_and_report(tuner, space: Space, info: dict, search_dir: Path) -> dict:
    _quiet_tune()
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
    trials = _trial_rows(results, space)
    closed = close_dangling_runs(info["mlflow_uri"], info["experiment_id"], parent, tune_trials)
    study = _finish_study(study_folder(info, search_dir), info["name"])
    table = format_trials(trials, space, _devices(info["stores"]), info["top"])
    front = pareto_front(study, trials) if space.objective.multi else []
    print("\n" + table)
    front_table = format_trials(front, space, _devices(info["stores"]), len(front), title=(
        f"Pareto front: {len(front)} of {len(trials)} trials that no other beats on both B&C accuracy (up) and "
        "|device gap| (down), on the selection clips")) if front else ""
    if front:
        print("\n" + front_table)
    client.log_text(parent, table + "\n", "best_trials.txt")
    client.log_text(parent, json.dumps(trials, indent=1, default=str), "trials.json")
    if front:
        client.log_text(parent, front_table + "\n", "pareto_front.txt")
    _log_plots(client, parent, study, space)
    counts = {s: sum(t["state"] == s for t in trials) for s in ("finished", "stopped", "diverged", "failed")}
    client.log_batch(parent, metrics=_parent_metrics(trials, space, counts))
    if note:
        client.set_tag(parent, "note", note)
    # MLflow's run note (Markdown): where a user lands in the UI, the result and what to do next
    fuse_cmd = (f"python -m search fuse --experiment {info['name']} --mlflow-uri {info['mlflow_uri']}"
                + (" --protocol paper" if space.protocol == "paper" else "") + " --register NAME --alias champion")
    client.set_tag(parent, "mlflow.note.content", f"{space.description}\n\n`{info['command']}`\n\n"
                   f"```text\n{table}\n```\n\nFuse the trials into one model:\n\n`{fuse_cmd}`\n")
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
    print(f"browse them: {ui_command(info['mlflow_uri'], info['experiment_id'])}")
    failed = [t["label"] for t in trials if t["state"] == "failed"]
    if failed:  # the last line, and a non-zero exit (search.__main__): a lost trial is not a result
        print(f"{len(failed)} trial(s) failed for good after {info.get('max_failures', 3) + 1} tries: "
              f"{', '.join(sorted(failed))} (their errors: {search_dir}/t*/error.txt; Ray's: {search_dir / LOG_FILE})",
              file=sys.stderr)
    return {"trials": trials, "front": front, "experiment_id": info["experiment_id"], "parent_run_id": parent,
            "failed": failed}


def distinct_line(space: Space, searcher, num_samples: int, trained: int) -> str:
    """What the search did about repeated configurations, in one line."""
    distinct = space.distinct_points()
    parts = [f"{trained} distinct configuration(s) trained"]
    if distinct is not None:
        parts.append(f"of the {len(distinct)} the space holds")
    if searcher.finished and trained < num_samples:
        parts.append(f"(num_samples {num_samples}: "
                     + ("every configuration is trained" if distinct is not None else "the sampler proposed only "
                        "configurations it knew") + ")")
    if searcher.repeats:
        parts.append(f"; {searcher.repeats} repeated proposal(s) were told their recorded result instead of training")
    if searcher.drawn:
        parts.append(f"; {searcher.drawn} configuration(s) drawn at random after the sampler kept repeating")
    return " ".join(parts).replace(" ;", ";")


def _unfinished(search_dir: Path, info: dict, space: Space, tune_trials: dict) -> list[str]:
    """The trials a Ctrl-C left unfinished. Tune marks them TERMINATED as it stops, so the searcher is
    the judge: it tells Optuna about every trial that ended (finished, stopped by ASHA, failed), and a
    trial it has not told about is still RUNNING in the study. A search stopped between two trials
    has fewer trials than it asked for (a grid or points space: fewer than its points)."""
    import optuna
    from optuna.trial import TrialState

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
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=study_storage(search_dir))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return study


def _trial_rows(results, space: Space) -> list[dict]:
    rows = []
    for result in results:
        m = result.metrics or {}
        trial_id = m.get("trial_id") or (Path(result.path).name if result.path else "?")
        reached, epochs = int(m.get("epoch", 0)), int(m.get("epochs", 0) or 0)
        if result.error is not None:
            state, status = "failed", "ERROR"
        elif m.get("diverged"):
            state, status = "diverged", "TERMINATED"
        else:
            state, status = ("finished" if reached >= epochs and epochs else "stopped"), "TERMINATED"
        row = {"trial_id": trial_id, "label": Path(result.path).name.split("_")[0] if result.path else trial_id, "state": state, "status": status,
               "epoch": reached, "epochs": epochs, "best_epoch": m.get("best_epoch"), "diverged": m.get("diverged"),
               "params": {k: v for k, v in (result.config or {}).items()},
               "describe": space.describe(result.config or {}) if result.config else ""}
        row.update({k: v for k, v in m.items() if k.startswith(("sel_", "eval_", "objective"))})
        rows.append(row)
    return rows


def device_columns(devices: list[str], unseen: bool) -> tuple[list[str], list[str]]:
    """(metric keys, column heads) of a device table: every device, B&C (the seen devices but A),
    the gap; where there are devices unseen in training, their pooled accuracy and its gap; Metric A, B."""
    keys = [f"acc_{d}" for d in devices] + ["acc_bc", "device_gap"] + (["acc_unseen", "unseen_gap"] if unseen else [])
    heads = [d.upper() for d in devices] + ["B&C", "gap"] + (["unseen", "u-gap"] if unseen else [])
    return keys + ["metric_a", "metric_b"], heads + ["MA", "MB"]


def _rank_key(space: Space):
    def key(row):
        if space.objective.multi:
            v = row.get("objective_acc_bc")
        else:
            v = row.get("objective")
        return -(v if isinstance(v, float) and math.isfinite(v) else -math.inf)
    return key


def format_trials(rows: list[dict], space: Space, devices: list[str], top: int, title: str | None = None) -> str:
    """The best trials: parameters, the selection clips' device columns at the selected epoch, the
    objective, the evaluation split beside them, and the epoch each reached."""
    shown = sorted(rows, key=_rank_key(space))[:top]
    searched = [k for k in space.searched] + (["point"] if space.sampler == "points" else [])
    cols, heads = device_columns(devices, any(k.endswith("acc_unseen") for r in rows for k in r))
    obj_cols = space.objective.metrics
    obj_heads = ["B&C*", "|gap|*"] if space.objective.multi else ["objective"]
    seeds = space.seeds > 1  # means over seeds: the objective with its standard error
    obj_width = (27 if seeds else 18) if not space.objective.multi else (17 if seeds else 10)
    lines = []
    width_params = max([len(_params_cell(r, searched)) for r in shown] + [10])
    group = f"{'':<6}{'':<{width_params + 2}}{'':<12}{'':>7}{'':>7}"
    cells = len(heads) * 7
    paper = space.protocol == "paper"  # chosen on the evaluation split itself: say so in every header
    chosen_on = "chosen on: evaluation split (%)" if paper else "selection clips (%)"
    beside = "evaluation split, = chosen on (%)" if paper else "evaluation split (%)"
    group += f" |{chosen_on:^{cells}} |{'':>{obj_width * len(obj_heads)}} |{beside:^{cells}}"
    head = (f"{'trial':<6}{'parameters':<{width_params + 2}}{'state':<12}{'epochs':>7}{'chosen':>7} |"
            + "".join(f"{h:>7}" for h in heads) + " |" + "".join(f"{h:>{obj_width}}" for h in obj_heads)
            + " |" + "".join(f"{h:>7}" for h in heads))
    each = (f"; every figure the mean over {space.seeds} seeds, the objective +- its standard error"
            if seeds else "")
    never = ("protocol paper: the epochs and the trials are chosen on the evaluation split itself, as the paper did, "
             "so its figures are not an unbiased estimate" if paper else
             "the evaluation split beside it is never used to choose")
    lines.append(title or f"best {len(shown)} of {len(rows)} trials by {space.objective.label()} on the "
                 f"{'evaluation split' if paper else 'selection clips'}, at each trial's chosen epoch ({never}){each}")
    counts = clips_line(shown, paper)
    if counts:
        lines.append(counts)
    lines.append(group.rstrip())
    lines.append(head)
    lines.append("-" * len(head))
    for r in shown:
        state = {"finished": "done", "stopped": f"ASHA@{r['epoch']}", "failed": "FAILED",
                 "diverged": f"diverged@{r.get('diverged')}"}[r["state"]]
        sel = "".join(f"{_pct(r.get('sel_' + c)):>7}" for c in cols)
        ev = "".join(f"{_pct(r.get('eval_' + c)):>7}" for c in cols)
        objs = "".join(f"{_num(r.get(c), pct=space.objective.multi, sem=r.get(c + '_sem') if seeds else None, cse=r.get(c + '_cse')):>{obj_width}}"
                       for c in obj_cols)
        lines.append(f"{r['label']:<6}{_params_cell(r, searched):<{width_params + 2}}{state:<12}"
                     f"{r['epoch']:>3}/{r['epochs']:<3}{str(r.get('best_epoch') or '-'):>7} |{sel} |{objs} |{ev}")
    note = noise_note(shown) if seeds and not space.objective.multi else ""
    if note:
        lines.append(note)
    warning = clip_warning(shown, space.objective) if not space.objective.multi else ""
    if warning:
        lines.append(warning)
    return "\n".join(lines)


def clips_line(rows: list[dict], paper: bool = False) -> str:
    """How many clips the choosing figures stand on, per device (from the first row that says)."""
    row = next((r for r in rows if "sel_n" in r), None)
    if row is None:
        return ""
    devices = sorted((k[6:] for k in row if k.startswith("sel_n_") and k[6:] not in ("bc", "unseen")
                      and not k.endswith(("_sem", "_cse"))), key=lambda d: (d != "a", d))
    parts = ", ".join(f"{d.upper()} {int(row['sel_n_' + d])}" for d in devices)
    where = "the evaluation split" if paper else "selection clips"
    return (f"{where}: {parts} (B&C {int(row.get('sel_n_bc', 0))}); objective +- c: its standard error from these "
            "clips (binomial; the delta method for Metric B and the gaps)"
            + ("; +- s: from the seeds" if any(k.endswith("_sem") for k in row) else ""))


def clip_warning(ranked: list[dict], objective, z: float = 2.0) -> str:
    """One line when the clips cannot tell the trials apart: the best trial's objective is uncertain
    by more (z clip standard errors) than the spread of the objectives it is ranked among."""
    valid = [r for r in ranked if isinstance(r.get("objective"), float) and math.isfinite(r["objective"])]
    if len(valid) < 2 or not isinstance(valid[0].get("objective_cse"), float):
        return ""
    best = valid[0]
    width, spread = z * best["objective_cse"], best["objective"] - min(r["objective"] for r in valid)
    if not width > spread:
        line = ""
    else:
        counts = ", ".join(f"{d.upper()} {int(best[k])}" for k in sorted(best) if k.startswith("sel_n_")
                           and (d := k[6:]) not in ("bc", "unseen") and not k.endswith(("_sem", "_cse")))
        line = (f"warning: the selection clips ({counts}) know {objective.label()} only within +-{100 * width:.1f} "
                f"points ({z:g} standard errors), more than the {100 * spread:.1f} points between the trials ranked "
                "here: hold out more locations (validation_share), choose by metric_a (all clips), or add seeds")
    sem = best.get("objective_sem")
    if isinstance(sem, float) and math.isfinite(sem) and sem > 0:
        dominant = "the clips'" if best["objective_cse"] > sem else "the seeds'"
        line = (line + "; " if line else "") + (
            f"for {best['label']}, {dominant} standard error is the larger (clips +-{100 * best['objective_cse']:.1f}, "
            f"seeds +-{100 * sem:.1f} points)")
    return line


def noise_note(ranked: list[dict], z: float = 2.0) -> str:
    """Which of the best trials the seeds cannot tell from the best one: those whose mean objective is
    within ``z`` standard errors of the difference (sqrt(se1^2 + se2^2)) of the best's."""
    valid = [r for r in ranked if isinstance(r.get("objective"), float) and math.isfinite(r["objective"])]
    if len(valid) < 2:
        return ""
    best = valid[0]
    tied = []
    for r in valid[1:]:
        se = math.sqrt((best.get("objective_sem") or 0.0) ** 2 + (r.get("objective_sem") or 0.0) ** 2)
        if not math.isfinite(se) or best["objective"] - r["objective"] <= z * se:
            tied.append(r["label"])
    if not tied:
        return (f"{best['label']} is ahead of the next by more than {z:g} standard errors of the difference: "
                "the seeds tell them apart")
    return (f"within the noise: {', '.join(tied)} {'is' if len(tied) == 1 else 'are'} less than {z:g} standard errors "
            f"of the difference behind {best['label']}: the seeds cannot tell {'it' if len(tied) == 1 else 'them'} "
            "apart from the best")


def _params_cell(row: dict, keys: list[str]) -> str:
    params = row["params"]
    cells = []
    for k in keys:
        if k not in params:
            continue
        v = params[k]
        cells.append(f"{_short(k)}={v:.3g}" if isinstance(v, float) else f"{_short(k)}={v}")
    # an enhancement's settings that the space fixes (or defaults): its one label says them
    if any(k in params and k not in keys for k in CONDITIONAL) and "enhancement" in params:
        cells.append(f"({Enhancement.compose(parse_composition(params['enhancement']), params).label()})")
    return " ".join(cells) or row["describe"]


_SHORT = {"enhancement": "enh", "median_filter_bands": "mf_b", "median_filter_frames": "mf_f", "normalization": "norm",
          "mixup_alpha": "alpha", "mean_subtraction": "ms"}


def _short(key: str) -> str:
    return _SHORT.get(key, key)


def _num(value, pct: bool = False, sem: float | None = None, cse: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{100 * value:.1f}" if pct else f"{value:.4f}"
    if sem is not None and math.isfinite(sem):
        text += f"+-{100 * sem:.1f}" if pct else f"+-{sem:.4f}"
    if cse is not None and isinstance(cse, float) and math.isfinite(cse):
        text += f" +-{cse:.3f}c" if not pct else f" +-{100 * cse:.1f}c"
    if sem is not None and math.isfinite(sem) and cse is not None:
        text = text.replace(f"+-{sem:.4f}", f"+-{sem:.3f}s", 1)
    return text


def pareto_front(study, rows: list[dict]) -> list[dict]:
    """The study's Pareto-optimal trials, as rows of the trials table."""
    by_tune_id = {r["trial_id"]: r for r in rows}
    return [by_tune_id[t.user_attrs[TRIAL_TAG]] for t in study.best_trials if t.user_attrs.get(TRIAL_TAG) in by_tune_id]


def _parent_metrics(trials, space: Space, counts: dict):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    out = [Metric(f"trials_{k}", float(v), now, 0) for k, v in counts.items()]
    ranked = sorted(trials, key=_rank_key(space))
    if ranked:
        for key in space.objective.metrics + ["sel_metric_b", "sel_acc_bc", "sel_device_gap", "eval_metric_b"]:
            v = ranked[0].get(key)
            if isinstance(v, float) and math.isfinite(v):
                out.append(Metric(f"best_{key}", v, now, 0))
    return out


def _log_plots(client, run_id: str, study, space: Space) -> None:
    """Optuna's plots of the study (matplotlib backend) as images of the search's parent run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as ov

    # The plots show the trials trained (and taken from earlier searches), not the repeated proposals
    # the study was told about at no cost.
    shown = optuna.create_study(directions=study.directions, sampler=optuna.samplers.RandomSampler())
    shown.add_trials([t for t in study.get_trials(deepcopy=False) if DUPLICATE_ATTR not in t.user_attrs])
    study = shown

    target = {}
    if space.objective.multi:
        target = {"target": lambda t: t.values[0], "target_name": "B&C accuracy"}
    plots = {"optuna_history.png": lambda: ov.plot_optimization_history(study, **target),
             "optuna_importance.png": lambda: ov.plot_param_importances(study, **target),
             "optuna_parallel_coordinate.png": lambda: ov.plot_parallel_coordinate(study, **target)}
    if space.objective.multi:
        plots["optuna_pareto_front.png"] = lambda: ov.plot_pareto_front(study, target_names=["B&C accuracy", "|device gap|"])
    for name, make in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = make()
        except Exception as exc:  # a study too small for a plot (one trial, one value of every parameter)
            print(f"note: no {name} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            continue
        fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        fig.set_size_inches(10, 6)
        fig.tight_layout()
        client.log_figure(run_id, fig, name)
        plt.close(fig)


def ui_command(uri: str, experiment_id: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/#/experiments/{experiment_id}/runs"
    return (f"{shlex.quote(sys.executable)} -m mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000\n"
            f"  then open http://127.0.0.1:5000/#/experiments/{experiment_id}/runs")
