"""MLflow: one experiment per search, a parent run for the search, one nested run per trial.

Only the driver writes (a Tune ``Callback``): it creates the experiment and the parent run before any
trial starts, opens a trial's run when Tune starts the trial, logs each result in one batched call at
step = epoch, and at the end logs the selected epoch's model, its predictions (Parquet, for fusion)
and a confusion matrix per device, then closes the run with the status the trial ended with. One
writer keeps a SQLite store safe however many trials run at once. A trial's run is found again by
its ``tune_trial_id`` tag, so a retried trial (killed worker) or a resumed search continues its run
instead of opening a second one.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import pickle
import re
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

from asc.errors import AscError, write_atomic
from asc.metrics import confusion
from search.predictions import log_predictions, predictions_table

TRIAL_TAG = "tune_trial_id"
SEARCH_TAG = "search"
ROLE_TAG = "role"  # "search" (the parent run), "trial" or "fusion"
MODEL_TAG = "model_uri"  # a trial's or a fusion's audio model (search.serving)
SELECTED_ON_TAG = "selected_on"  # "validation" (held-out training locations) or "evaluation" (protocol paper)
STORE_TAG = "store_name"  # the identity of the feature store a trial read (search.stores.store_identity)
KEY_TAG = "config_key"  # the configuration's identity (search.space.Space.config_key)
# The devices of the training split ("a,b,c"): which devices Metric B pools as B&C and which are
# unseen, for `fuse` where the store cannot be read.
TRAIN_DEVICES_TAG = "train_devices"


RUNS_VIEW = "trials"  # the key of the runs table every search's experiment carries (runs_view)
FUSIONS_VIEW = "fusions"  # the key of the fusions' table, set by the first fusion (fusions_view)
STATE_TAG = "state"  # a trial's end as the best-trials table says it: done 6/6, ASHA@2/6, diverged@3, FAILED
_VIEW_METRICS = ("sel_metric_b", "sel_acc_bc", "sel_device_gap", "eval_metric_b", "eval_acc_bc", "eval_acc_unseen",
                 "best_epoch")


def runs_view(space, unseen: bool = True) -> dict[str, str]:
    """The experiment tag that makes MLflow's runs table show a search's trials the way a person
    compares them: MLflow's own shared view (the UI reads an experiment tag
    ``mlflow.sharedViewState.KEY`` when opened with ``?viewStateShareKey=KEY``, :func:`runs_url`).
    The trials alone (the search's run left out: a trial is otherwise nested, and folded, under it;
    the fusions apart, :func:`fusions_view`: chosen on the clips whose objective this table ranks
    by, they would head it), best objective first, with the objective and its clips' standard error,
    the selection and evaluation figures and how each ended (``done 6/6``, ``ASHA@2/6``) as columns,
    after the parameters the space searches. ``unseen``: whether the set has devices unseen in
    training (their evaluation accuracy is a column then)."""
    objective = space.objective.metrics + ([] if space.objective.multi else ["objective_cse"])
    figures = [m for m in _VIEW_METRICS if m not in objective and (unseen or "unseen" not in m)]
    columns = ([f"params.`{p}`" for p in space.shown] + [f"tags.`{STATE_TAG}`"]
               + [f"metrics.`{m}`" for m in objective + figures] + ["attributes.`Duration`"])
    view = {"searchFilter": f"tags.{ROLE_TAG} = 'trial'", "orderByKey": f"metrics.`{space.objective.metrics[0]}`",
            "orderByAsc": space.objective.modes[0] == "min", "selectedColumns": columns, "columnOrder": columns}
    return {f"mlflow.sharedViewState.{RUNS_VIEW}": json.dumps(view)}


def fusions_view(unseen: bool = True) -> dict[str, str]:
    """The experiment tag of a search's fusions' table (``?viewStateShareKey=fusions``), best objective
    first (sorted by start time, MLflow's UI would nest them under the search's run): how each was
    chosen (method, objective, members and weights) and its figures, the evaluation split's first (the
    selection clips chose the fusion, so its objective there flatters it)."""
    figures = ["eval_metric_b", "eval_acc_bc", "eval_device_gap", *(["eval_acc_unseen"] if unseen else []),
               "objective", "objective_cse", "members"]
    columns = (["params.`method`", "params.`by`", "params.`members`", "params.`weights`"]
               + [f"metrics.`{m}`" for m in figures] + ["attributes.`Duration`"])
    view = {"searchFilter": f"tags.{ROLE_TAG} = 'fusion'", "orderByKey": "metrics.`objective`", "orderByAsc": False,
            "selectedColumns": columns, "columnOrder": columns}
    return {f"mlflow.sharedViewState.{FUSIONS_VIEW}": json.dumps(view)}


def ensure_runs_view(uri: str, experiment_id: str, space, unseen: bool = True,
                     train_devices: list[str] | None = None) -> None:
    """Give an experiment made before searches carried :func:`runs_view` that view, so that the
    address a resumed search prints opens its trials' table (an experiment that has it keeps it),
    and the devices its training split holds (``TRAIN_DEVICES_TAG``)."""
    client = MlflowClient(uri)
    key = f"mlflow.sharedViewState.{RUNS_VIEW}"
    tags = client.get_experiment(experiment_id).tags
    if key not in tags:
        client.set_experiment_tag(experiment_id, key, runs_view(space, unseen)[key])
    if train_devices and TRAIN_DEVICES_TAG not in tags:
        client.set_experiment_tag(experiment_id, TRAIN_DEVICES_TAG, ",".join(train_devices))


def runs_url(base: str, experiment_id: str, view: str = RUNS_VIEW) -> str:
    """The address of a search's trials (or, ``view=FUSIONS_VIEW``, its fusions) in MLflow's UI at
    ``base``, in :func:`runs_view`'s (:func:`fusions_view`'s) table and in the UI's model-training
    workspace (MLflow 3 opens in its GenAI one otherwise)."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={view}"
            "&workflowType=machine_learning")


def run_tags(tags: dict) -> dict:
    """``tags`` and the ones MLflow's own ``mlflow.start_run`` adds (user, source, the git commit of
    the code that runs, where there is one), so that the runs this project creates with the client
    show where they came from as every other MLflow run does."""
    return resolve_tags(tags)


def selected_on(protocol: str) -> str:
    """Which clips a protocol chooses on, as the tables and tags name them."""
    return "evaluation" if protocol == "paper" else "validation"


def artifact_text(client, run_id: str, path: str) -> str:
    """A text artifact of a run. Downloaded into a folder that is removed afterwards: MLflow's own
    download, given no destination, leaves a temporary folder behind on every call."""
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` tracking URI (relative or absolute), else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_tracking_uri(uri: str, timeout: float = 5.0, must_exist: bool = False, created: Path | None = None) -> None:
    """Fail in seconds, with one line, when a tracking server does not answer (MLflow itself retries
    for minutes), or when a local store cannot be written. ``must_exist``: commands that only read
    (fuse, predict) refuse a database file that is not there instead of creating an empty one.
    ``created``: a folder the caller creates later (a search's ``--storage``), fine as the database's."""
    retry_delays()  # a bad $ASC_MLFLOW_RETRY_DELAYS is one line now, not at the store's first hiccup
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                if response.status != 200:
                    raise OSError(f"HTTP {response.status}")
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise AscError(f"MLflow tracking server {uri}: not reachable ({reason})") from None
    elif parsed.scheme == "sqlite":
        path = sqlite_file(uri)
        if not path.parent.is_dir() and (created is None or path.parent != created.resolve()):
            hint = f" ({where_hint(uri)})" if must_exist else ""
            raise AscError(f"MLflow store {uri}: folder {path.parent} does not exist{hint}")
        if must_exist and not path.is_file():
            raise AscError(f"MLflow store {uri}: no such database ({where_hint(uri)})")
        if path.is_file():  # one that is there must be a database MLflow can read (not a damaged file)
            _try_store(uri)
    elif parsed.scheme in ("", "file"):
        raise AscError(f"MLflow tracking URI {uri!r}: use a database (sqlite:///PATH.db) or a server "
                       "(http://HOST:5000); MLflow 3 refuses new file stores")
    else:  # another database MLflow knows (postgresql://, mysql://, ...) or a scheme it does not
        _try_store(uri)


def where_hint(uri: str, search: str = "the search") -> str:
    """What to do about a tracking URI that holds no search, naming where the URI came from when it is
    the environment's (a user who set MLFLOW_TRACKING_URI for another project gave no option)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and tracking_uri(env, Path(".")) == uri:
        return f"from MLFLOW_TRACKING_URI: give the --mlflow-uri {search} ran with, or set the variable to it"
    return f"give the --mlflow-uri {search} ran with"


def _try_store(uri: str) -> None:
    """One read of the store, so that one MLflow cannot use is one line now, not a traceback later."""
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # MLflow's and the database driver's own errors, of many types
        first = str(exc).strip().splitlines()[0].split(". See ")[0] if str(exc).strip() else type(exc).__name__
        raise AscError(f"MLflow tracking URI {uri!r}: cannot use it ({first})") from None


def default_uri(folder: Path) -> str:
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


URI_ORDER = "--mlflow-uri, else $MLFLOW_TRACKING_URI, else sqlite:///STORAGE/mlflow.db"


def tracking_uri(explicit: str | None, folder: Path) -> str:
    """The tracking URI a command uses, as MLflow users expect (:data:`URI_ORDER`): the option, the
    environment variable every MLflow tool honours, or the local store under ``folder``."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri is None:
        return default_uri(Path(folder))
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # absolute, for `resume` elsewhere
        return f"sqlite:///{sqlite_file(uri).resolve()}"
    return uri


def resume_tracking_uri(recorded: str, explicit: str | None, experiment_id: str, parent_run_id: str) -> tuple[str, str]:
    """The tracking URI ``resume`` writes to, and a line to print when it is not the recorded one.

    A resumed search must write to the store it ran with (its experiment and parent run are there),
    but that store may be reached at another address now: a tracking server on a new head, a
    database whose folder moved. So, as every MLflow tool: ``--mlflow-uri``, else
    ``$MLFLOW_TRACKING_URI``, else the URI the search recorded; a URI other than the recorded one is
    taken only if it holds the search's parent run. An option that does not is refused in one line;
    an environment variable that does not (set for another project, say) is passed over, saying so."""
    given = explicit or os.environ.get("MLFLOW_TRACKING_URI") or None
    uri = tracking_uri(given, Path(".")) if given else recorded
    if uri == recorded:
        check_tracking_uri(recorded, must_exist=True)
        return recorded, ""
    source = "--mlflow-uri" if explicit else "$MLFLOW_TRACKING_URI"
    try:
        check_tracking_uri(uri, must_exist=True)
        run = MlflowClient(uri).get_run(parent_run_id)
        missing = "" if run.info.experiment_id == experiment_id else f"run {parent_run_id} is of another experiment"
    except AscError as exc:
        missing = str(exc)
    except MlflowException:
        missing = f"no run {parent_run_id}"
    if not missing:
        return uri, f"MLflow: {uri} ({source}; the search ran with {recorded}, and its runs are here)"
    if explicit:
        raise AscError(f"{source} {uri}: not the store this search ran with ({missing}); it ran with {recorded}")
    check_tracking_uri(recorded, must_exist=True)
    return recorded, f"note: {source} {uri} does not hold this search ({missing}); MLflow: {recorded}, as it ran"


def check_new_experiment(uri: str, name: str) -> None:
    """A search's experiment name must be new in the tracking store: checked before anything starts
    (a local database that is not there yet holds none, and is not created to find out)."""
    if sqlite_file(uri) is not None and not sqlite_file(uri).is_file():
        return
    if MlflowClient(uri).get_experiment_by_name(name) is not None:
        raise AscError(f"MLflow at {uri} already has an experiment named {name!r} (another search of that name): "
                       "give another --name")


def start_search(uri: str, name: str, artifact_root: Path | None, space, command: str, settings: dict,
                 store_names: dict | None = None, unseen: bool = True,
                 train_devices: list[str] | None = None) -> tuple[str, str]:
    """Create the search's experiment (one per search) and its parent run; returns (experiment id, run id).
    The experiment's tags say what its trials can be compared with (``--warm-start`` reads them):
    objective, protocol, seeds and the feature stores' identities; the devices of the training
    split; and how the runs table shows them (:func:`runs_view`, ``unseen`` as there)."""
    check_new_experiment(uri, name)  # again: another search may have taken the name since
    client = MlflowClient(uri)
    location = (artifact_root / name).resolve().as_uri() if artifact_root is not None else None
    experiment_id = client.create_experiment(name, artifact_location=location, tags={
        "space": space.path, "objective": space.objective.label(), "protocol": space.protocol,
        "validation_share": f"{space.validation_share:g}",
        SELECTED_ON_TAG: selected_on(space.protocol), "seeds": str(space.seeds),
        "store_names": json.dumps(store_names or {}, sort_keys=True), **runs_view(space, unseen),
        **({TRAIN_DEVICES_TAG: ",".join(train_devices)} if train_devices else {})})
    run = client.create_run(experiment_id, run_name=f"search {name}",
                            tags=run_tags({SEARCH_TAG: name, ROLE_TAG: "search", "command": command,
                                           SELECTED_ON_TAG: selected_on(space.protocol),
                                           "mlflow.note.content": f"{space.description}\n\n`{command}`"}))
    run_id = run.info.run_id
    params = {"space": Path(space.path).name, "sampler": space.sampler, "objective": space.objective.label(),
              "scheduler": space.scheduler.name, **{k: str(v) for k, v in settings.items()}}
    if space.scheduler.name == "asha":
        params.update(asha_max_t=space.scheduler.max_t, asha_grace_period=space.scheduler.grace_period,
                      asha_reduction_factor=space.scheduler.reduction_factor, asha_noise_z=space.scheduler.noise_z)
    _log_params(client, run_id, params)
    client.log_text(run_id, space.text, Path(space.path).name)
    client.log_text(run_id, command + "\n", "command.txt")
    return experiment_id, run_id


def _log_params(client, run_id: str, params: dict) -> None:
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])


def _clean(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


try:
    from ray.tune import Callback
except ImportError:  # tracking helpers stay importable without Ray
    Callback = object


def _tolerant(hook):
    """A tracking failure (a tracking server's hiccup) is a warning, never the end of the search:
    Tune would turn an exception in a callback into a failed experiment."""
    @functools.wraps(hook)
    def wrapper(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except Exception as exc:
            print(f"warning: MLflow {hook.__name__}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  file=sys.stderr)
    return wrapper


class RetryingClient:
    """An ``MlflowClient`` whose writes survive a tracking server that blinks. Every call is retried
    with back-off (``delays``, else :func:`retry_delays`: about half a minute in all, on top of
    MLflow's own few retries). A metric, parameter, tag or status write that still fails is not
    dropped: it is kept, in order, together with every such write after it (so that a run is never
    closed before its last epoch is written), and tried again before the next write, and at the end
    of the search (:meth:`flush`).
    Artifact writes (files in temporary folders) are retried in place and raise if they still fail;
    a trial's whole model and artifacts are retried the same way (:func:`retry_transient`)."""

    DEFERRABLE = ("log_batch", "set_tag", "set_terminated", "update_run")

    def __init__(self, uri: str, delays: tuple | None = None):
        self.uri, self.delays = uri, retry_delays() if delays is None else delays
        self._client = MlflowClient(uri)
        self.pending: deque = deque()
        self._lock = threading.RLock()
        self._warned = False
        self.refused: dict[str, int] = {}  # run id -> kept writes the store refused for good (dropped)

    def _retry(self, method, args, kwargs, delays):
        return retry_transient(lambda: method(*args, **kwargs), delays)

    def __getattr__(self, name):
        method = getattr(self._client, name)
        if not callable(method):
            return method
        if name not in self.DEFERRABLE:
            return lambda *args, **kwargs: self._retry(method, args, kwargs, self.delays)

        def write(*args, **kwargs):
            with self._lock:
                self._flush_some(())
                if not self.pending:
                    try:
                        return self._retry(method, args, kwargs, self.delays)
                    except Exception as exc:
                        if not _transient(exc):
                            raise
                        self._warn(exc)
                self.pending.append((name, args, kwargs))
        return write

    def _warn(self, exc) -> None:
        if not self._warned:
            self._warned = True
            print(f"warning: MLflow at {self.uri} does not answer ({type(exc).__name__}); its writes are kept and "
                  "sent when it answers again", file=sys.stderr, flush=True)

    def _flush_some(self, delays) -> None:
        while self.pending:
            name, args, kwargs = self.pending[0]
            try:
                self._retry(getattr(self._client, name), args, kwargs, delays)
            except Exception as exc:
                if not _transient(exc):  # e.g. a run deleted meanwhile: it can never be written
                    self.pending.popleft()
                    run_id = str(args[0]) if args else "?"
                    if run_id not in self.refused:  # one line per run, however many writes it had kept
                        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                        print(f"warning: MLflow at {self.uri} refused a kept write ({name} to run {run_id}: "
                              f"{type(exc).__name__}: {first}); that run's kept writes are dropped",
                              file=sys.stderr, flush=True)
                    self.refused[run_id] = self.refused.get(run_id, 0) + 1
                    continue
                return
            self.pending.popleft()

    def flush(self, delays: tuple = (2, 4, 8, 16, 30, 60)) -> int:
        """Send what is kept, patiently; returns how many writes are still unsent."""
        with self._lock:
            self._flush_some(delays)
            if not self.pending and self._warned:
                dropped = sum(self.refused.values())
                print(f"MLflow at {self.uri} answers again: every kept write is sent"
                      + (f", but {dropped} to {len(self.refused)} run(s) it refused (named above)" if dropped else ""),
                      file=sys.stderr, flush=True)
                self._warned = False
            return len(self.pending)


RETRY_ENV = "ASC_MLFLOW_RETRY_DELAYS"


def retry_delays(default: tuple = (1, 2, 4, 8, 16)) -> tuple:
    """Seconds between the tries of an unanswered MLflow write before it is kept for later: the
    comma-separated list in ``$ASC_MLFLOW_RETRY_DELAYS``, else about half a minute in all. A search
    waits this long (its driver's loop blocked) the first time a tracking server stops answering."""
    text = os.environ.get(RETRY_ENV, "").strip()
    if not text:
        return default
    try:
        delays = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise AscError(f"{RETRY_ENV}={text!r}: give seconds separated by commas, e.g. 1,2,4,8,16") from None
    if any(d < 0 or math.isnan(d) for d in delays):
        raise AscError(f"{RETRY_ENV}={text!r}: a delay is negative or not a number")
    return delays


def retry_transient(call, delays: tuple):
    """``call()``, tried again after each of ``delays`` (seconds) while it fails as an unreachable or
    overloaded server does (:func:`_transient`); any other failure, or the last, is raised."""
    for delay in (*delays, None):
        try:
            return call()
        except Exception as exc:  # MLflow raises its own, requests' and OS errors for an absent server
            if delay is None or not _transient(exc):
                raise
            time.sleep(delay)


def _transient(exc) -> bool:
    """A failure a later try can fix: the server did not answer, or answered 5xx / 429."""
    text = f"{type(exc).__name__} {exc}"
    if isinstance(exc, MlflowException):
        code = getattr(exc, "get_http_status_code", lambda: 500)()
        return code >= 500 or code == 429 or any(k in text for k in ("Connection", "Max retries", "timed out"))
    return isinstance(exc, (OSError, ConnectionError)) or any(k in text for k in ("Connection", "Timeout"))


PENDING_FILE = "mlflow_pending.pkl"


def save_pending(clients: list, search_dir: Path) -> None:
    """Writes still unsent at the end of a search, kept for `resume` (:func:`send_pending`)."""
    path = Path(search_dir) / PENDING_FILE
    pending = [w for c in clients for w in c.pending]
    if pending:
        path.write_bytes(pickle.dumps(pending))
    else:
        path.unlink(missing_ok=True)


def send_pending(uri: str, search_dir: Path) -> int:
    """Send the writes an earlier driver kept (:func:`save_pending`); returns how many are still unsent."""
    path = Path(search_dir) / PENDING_FILE
    if not path.is_file():
        return 0
    client = RetryingClient(uri)
    client.pending.extend(pickle.loads(path.read_bytes()))
    left = client.flush()
    save_pending([client], search_dir)
    return left


ARTIFACT_ERROR_TAG = "artifact_error"
UNLOGGED_FILE = "artifacts_unlogged.json"  # in a trial's folder: its artifacts are not in MLflow yet


def unlogged_trials(search_dir: Path) -> list[tuple[Path, dict]]:
    """(record file, record) of every trial of the search whose artifacts could not be logged (its
    run is tagged ``artifact_error``); its checkpoint is still in its folder."""
    found = []
    for path in sorted(Path(search_dir).glob(f"*/{UNLOGGED_FILE}")):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or not {"run_id", "label", "checkpoint"} <= record.keys():
                raise ValueError("not a record of run_id, label and checkpoint")
        except (OSError, ValueError) as exc:
            print(f"warning: {path}: unreadable ({exc}); its trial's artifacts stay unlogged", file=sys.stderr)
            continue
        found.append((path, record))
    return found


def send_unlogged(uri: str, search_dir: Path) -> list[str]:
    """Log the artifacts that a search could not (:func:`unlogged_trials`) from the trials' checkpoints
    and clear their runs' ``artifact_error``; returns the labels of those that still fail."""
    client, failed = RetryingClient(uri), []
    for path, record in unlogged_trials(search_dir):
        folder = path.parent / record["checkpoint"]
        try:
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} is gone")
            retry_transient(lambda: log_trial_artifacts(client, uri, record["run_id"], folder, record["label"]),
                            client.delays)
            client.delete_tag(record["run_id"], ARTIFACT_ERROR_TAG)
        except Exception as exc:
            print(f"warning: {record['label']}: its artifacts still cannot be logged to MLflow "
                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})", file=sys.stderr)
            failed.append(record["label"])
            continue
        path.unlink()
        print(f"{record['label']}: its model and artifacts are logged to MLflow now")
    return failed


ACTIVE: dict = {}  # the tracker of the search this driver runs (the end of the search flushes it)

# What `resume` knows better than the pickled experiment state: where the search's study folder is
# now (the study's database and ASHA's state are there, wherever the pickled searcher and scheduler
# thought they were: the folder may have moved, or be an NFS mount at another path; the search's
# folder unless it ran with --study-dir), and the tracking URI its runs are reached at now.
RESUMING: dict = {}


class MlflowTracker(Callback):
    """The Tune callback that writes every trial to MLflow (see the module docstring)."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, search: str, space, stores: dict[str, str],
                 store_names: dict[str, str] | None = None):
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.search, self.space, self.stores = search, space, stores
        self.store_names = store_names or {}
        self.runs: dict[str, str] = {}
        # The last epoch logged per trial: a trial retried from its last registered checkpoint may
        # report an epoch again (with the same figures: resuming reproduces them); it is logged once.
        self.logged: dict[str, int] = {}
        self.waiting: dict[str, list] = {}  # results not yet logged because the trial's run is not there yet
        self._client = None
        # A finished trial's artifacts (model, predictions, plots: 1-2 s) are logged on one background
        # thread, so that Tune starts the next trial meanwhile; the run is closed after them.
        self._executor = None
        self._pending: list = []

    def __getstate__(self):  # pickled with the experiment state: keep no connection, no thread
        return {**self.__dict__, "_client": None, "runs": {}, "logged": {}, "_executor": None, "_pending": []}

    def __setstate__(self, state):  # a tracker pickled by an earlier version has no waiting results
        self.__dict__.update({"waiting": {}, **state})
        self.uri = RESUMING.get("mlflow_uri", self.uri)  # the store may be reached at another address now

    @property
    def client(self) -> RetryingClient:
        if self._client is None:
            self._client = RetryingClient(self.uri)
            ACTIVE["tracker"] = self
        return self._client

    # ---- runs -------------------------------------------------------------------------------------
    def run_name(self, trial) -> str:
        return f"{trial_label(trial)} {self.space.describe(trial.config)}"

    def run_id(self, trial) -> str:
        """The trial's run: the one opened before (also by an earlier driver), else a new one."""
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        found = self._trial_runs(trial)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "resumed", "true")
            self.logged[trial.trial_id] = max((m.step for m in self.client.get_metric_history(run_id, "train_loss")),
                                              default=0)
            self.runs[trial.trial_id] = run_id
            # epochs an earlier driver kept for a server that did not answer, and died holding: Tune
            # recorded them, and will not report those before the trial's checkpoint again
            for result in recorded_results(trial):
                self._log_result(run_id, trial, result)
        else:
            tags = run_tags({
                "mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial.trial_id, SEARCH_TAG: self.search,
                ROLE_TAG: "trial", "description": self.space.describe(trial.config),
                SELECTED_ON_TAG: selected_on(self.space.protocol),
                STORE_TAG: self.store_names.get(self.space.feature_config(trial.config).key(), ""),
                KEY_TAG: self.space.config_key(trial.config)})

            tries = []

            def create():  # a try whose answer was lost may have made the run: look before making another
                made = self._trial_runs(trial, retry=False) if tries else []
                tries.append(1)
                return made[0] if made else self.client._client.create_run(
                    self.experiment_id, run_name=self.run_name(trial), tags=tags)
            run_id = retry_transient(create, self.client.delays).info.run_id
            _log_params(self.client, run_id, {**trial.config, "store": self.stores.get(
                self.space.feature_config(trial.config).key(), "")})
        self.runs[trial.trial_id] = run_id
        return run_id

    def _trial_runs(self, trial, retry: bool = True) -> list:
        """The runs of ``trial`` in the experiment (one, or none yet)."""
        client = self.client if retry else self.client._client
        return client.search_runs([self.experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{trial.trial_id}'",
                                  max_results=2)

    @_tolerant
    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial)

    @_tolerant
    def on_trial_restore(self, iteration, trials, trial, **info):
        self.run_id(trial)

    @_tolerant
    def on_trial_recover(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, "retries", str(int(trial.num_failures)))

    @_tolerant
    def on_trial_result(self, iteration, trials, trial, result, **info):
        # Kept until the trial's run exists: a server that does not answer when a trial starts (longer
        # than the retries) would otherwise lose the epochs reported before it answers again.
        self.waiting.setdefault(trial.trial_id, []).append(dict(result))
        self._log_waiting(trial)

    def _log_waiting(self, trial) -> None:
        run_id = self.run_id(trial)  # raises while the server does not answer: the results stay kept
        for result in self.waiting.pop(trial.trial_id, []):
            self._log_result(run_id, trial, result)

    def _log_result(self, run_id: str, trial, result: dict) -> None:
        step, now = int(result["epoch"]), int(time.time() * 1000)
        if step <= self.logged.get(trial.trial_id, 0):
            return
        keys = [k for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and k not in ("epoch", "epochs", "training_iteration", "timestamp", "pid", "time_this_iter_s",
                              "time_total_s", "time_since_restore", "iterations_since_restore")]
        metrics = [Metric(k, _clean(result[k]), now, step) for k in keys if _clean(result[k]) is not None]
        self.client.log_batch(run_id, metrics=metrics)  # written, or kept to be written (RetryingClient)
        self.logged[trial.trial_id] = step

    @_tolerant
    def on_trial_complete(self, iteration, trials, trial, **info):
        self._log_waiting(trial)
        run_id = self.run_id(trial)
        result = trial.last_result or {}
        reached, epochs = int(result.get("epoch", 0)), int(result.get("epochs", 0))
        self.client.set_tag(run_id, "epoch_reached", str(reached))
        diverged = result.get("diverged")
        # the runs table's state column: a stopped trial's FINISHED says nothing of ASHA
        self.client.set_tag(run_id, STATE_TAG, f"diverged@{diverged}" if diverged else
                            f"ASHA@{reached}/{epochs}" if reached < epochs else f"done {reached}/{epochs}")
        # A diverged trial ended at its last good epoch, but was not stopped by ASHA: FAILED, with why.
        self.client.set_tag(run_id, "stopped_early", str(reached < epochs and not diverged).lower())
        if diverged:
            self.client.set_tag(run_id, "diverged_at_epoch", str(diverged))
            self.client.set_tag(run_id, "diverged_reason", str(result.get("diverged_reason", ""))[:4000])
        self.client.set_tag(run_id, "mlflow.note.content", trial_note(result, (trial.config or {}).get("protocol"),
                                                                       None if self.space.objective.multi else
                                                                       self.space.objective.label()))
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-artifacts")
        self._pending.append(self._executor.submit(self._finish, run_id, trial.checkpoint, trial_label(trial),
                                                   "FAILED" if diverged else "FINISHED"))

    def _finish(self, run_id: str, checkpoint, label: str, status: str = "FINISHED") -> None:
        try:
            if checkpoint is not None:
                with checkpoint.as_directory() as folder:
                    # a server that blinks: the whole logging again (it drops a half-logged model first)
                    retry_transient(lambda: log_trial_artifacts(self.client, self.uri, run_id, Path(folder), label),
                                    self.client.delays)
        except Exception as exc:  # a bug or a full disk here must not fail the search: the trial is done
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"warning: {label}: could not log its artifacts to MLflow ({message})", file=sys.stderr)
            self.client.set_tag(run_id, ARTIFACT_ERROR_TAG, message[:4000])
            # beside the checkpoint they come from, for `resume` (send_unlogged); the tag says it if not
            with contextlib.suppress(OSError):
                write_atomic(Path(checkpoint.path).parent / UNLOGGED_FILE, json.dumps({
                    "run_id": run_id, "label": label, "checkpoint": Path(checkpoint.path).name, "error": message}))
        finally:
            self.client.set_terminated(run_id, status)

    def wait(self) -> None:
        """Block until every finished trial's artifacts are logged and its run closed."""
        for future in self._pending:
            future.result()
        self._pending = []

    def on_experiment_end(self, trials, **info):
        self.wait()

    @_tolerant
    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        if trial.error_file and os.path.isfile(trial.error_file):
            self.client.set_tag(run_id, "error", Path(trial.error_file).read_text()[-4000:])
        self.client.set_tag(run_id, STATE_TAG, "FAILED")
        self.client.set_terminated(run_id, "FAILED")


def recorded_results(trial) -> list[dict]:
    """The results Tune recorded for ``trial``, one per epoch (the last report of an epoch counts: a
    trial resumed from the checkpoint before it reports it again, equal), in order; none where nothing
    is readable. From its ``result.json``, and its ``progress.csv`` for the epochs that file lacks: on
    a restore Tune copies the trial's files back from its storage, and a ``result.json`` was seen to
    lose its lines before the restore so (its ``progress.csv`` kept them)."""
    folder = next((Path(f) for f in (trial.path, trial.local_path) if f and (Path(f) / "result.json").is_file()), None)
    if folder is None:
        return []
    rows = {}
    for line in (folder / "result.json").read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):  # a line cut short by the driver's death
            row = json.loads(line)
            if isinstance(row, dict) and isinstance(row.get("epoch"), (int, float)):
                rows[int(row["epoch"])] = row
    for row in progress_rows(folder / "progress.csv"):
        if isinstance(row.get("epoch"), int) and row["epoch"] not in rows:
            rows[row["epoch"]] = {k: v for k, v in row.items() if "/" not in k}  # nested figures: not these
    return [rows[e] for e in sorted(rows)]


def progress_rows(path: Path) -> list[dict]:
    """Every row of a Tune ``progress.csv`` (a result each), its cells as the numbers Tune wrote (a
    float's repr reads back exactly), else as text; none where the file is missing or unreadable."""
    def value(text: str):
        for kind in (int, float):
            with contextlib.suppress(ValueError):
                return kind(text)
        return text

    try:
        with path.open(newline="") as handle:
            return [{k: value(v) for k, v in row.items() if k is not None} for row in csv.DictReader(handle)]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def percent(figures: dict, key: str, errors: tuple = (("_cse", ""),)) -> str:
    """``figures[key]`` in percent for a run note, with its standard errors (``key + suffix``, each
    named by its word), e.g. ``61.0 ± 4.3``; ``-`` where the figure is missing or not finite."""
    def finite(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not finite(figures.get(key)):
        return "-"
    ses = [f"{100 * figures[key + s]:.1f}{word}" for s, word in errors if finite(figures.get(key + s))]
    return f"{100 * figures[key]:.1f}" + (f" ± {', '.join(ses)}" if ses else "")


# The figures a selection is judged by, in the order the tables show them (the gaps in points)
FIGURES = (("acc_a", "A"), ("acc_b", "B"), ("acc_c", "C"), ("acc_bc", "B&C"), ("device_gap", "gap"),
           ("acc_unseen", "unseen"), ("metric_a", "Metric A"), ("metric_b", "Metric B"))


def figures_line(figures: dict, prefix: str = "") -> str:
    """``A 62.1 ± 3.4, B 50.0 ± 12.5, ..., Metric B 56.0 ± 6.3``: every figure ``figures`` holds (under
    ``prefix``: ``sel_``), in percent, each with its standard error from the clips."""
    return ", ".join(f"{name} {percent(figures, prefix + key)}" for key, name in FIGURES if prefix + key in figures)


def trial_note(result: dict, protocol: str | None = None, objective: str | None = None) -> str:
    """A finished trial's run note (its Description in MLflow's UI): how far it ran, the epoch it kept,
    and the figures that chose it, in percent with their standard errors from the clips (``objective``:
    its label, shown beside them unless it is one of them)."""
    def pct(key):
        return percent(result, key)

    reached, epochs = int(result.get("epoch", 0)), int(result.get("epochs", 0))
    if result.get("diverged"):
        ran = f"Diverged at epoch {result['diverged']} ({str(result.get('diverged_reason', ''))[:200]})"
    else:
        ran = f"Ran {reached} of {epochs} epochs" + (" (stopped by ASHA)" if reached < epochs else "")
    where = "the evaluation split (protocol paper)" if protocol == "paper" else "the selection clips"
    objective = (f"; the objective, {objective}, {pct('objective')}" if objective not in (None, *dict(FIGURES))
                 and "objective" in result else "")
    return (f"{ran}; kept epoch {result.get('best_epoch') or '-'}, chosen on {where} (%, the gap in points, ± one "
            f"standard error from the clips): {figures_line(result, 'sel_')}{objective}. Evaluation split at that "
            f"epoch: Metric B {pct('eval_metric_b')} %. Every figure per epoch: Model metrics; the kept epoch's: the "
            "`sel_*` and `eval_*` metrics.")


def trial_label(trial_or_name) -> str:
    """``t007`` for Tune's seventh trial: the number Tune puts in front of its experiment tag
    (``7_enhancement=...``) and in its folder name (``run_trial_<id>_7_...``)."""
    text = trial_or_name if isinstance(trial_or_name, str) else f"x_{trial_or_name.trial_id}_{trial_or_name.experiment_tag}"
    match = re.match(r"^.*?_[0-9a-f]{5,}_(\d+)(?:_|$)", text)
    return f"t{int(match.group(1)):03d}" if match else text


# --------------------------------------------------------------------------------------------------
# Artifacts of a finished trial
# --------------------------------------------------------------------------------------------------
def seed_folders(folder: Path) -> list[tuple[str, Path]]:
    """The runs in a trial's checkpoint folder: ``[("", folder)]`` for one seed, else
    ``[("seed0", folder/seed0), ...]`` for a several-seed trial (``asc.train.train_seeds``)."""
    runs = sorted((p for p in folder.glob("seed*") if p.is_dir() and p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
    return [(p.name, p) for p in runs] if runs else [("", folder)]


def trial_predictions(probs_files: list[tuple[str, Path]]):
    """The selected epoch's predictions (``best_probs.npz``: selection clips and evaluation clips) as a
    ``predictions.parquet`` table (``search.predictions``), and the classes. Several seeds
    (``[(name, best_probs.npz), ...]``): their average, and each seed's own under its name."""
    datas = [(name, np.load(f)) for name, f in probs_files]
    first = datas[0][1]
    classes = [str(c) for c in first["classes"]]
    parts = []
    for prefix, split in (("", "selection"), ("test_", "evaluation")):
        if prefix + "probs" not in first:
            continue
        for name, data in datas[1:]:
            if list(data[prefix + "filenames"]) != list(first[prefix + "filenames"]):
                raise AscError(f"{name}: its {split} clips differ from {datas[0][0]}'s")
        probs = np.mean([data[prefix + "probs"] for _, data in datas], axis=0)
        per_seed = {name: data[prefix + "probs"] for name, data in datas} if len(datas) > 1 else {}
        parts.append((split, first[prefix + "filenames"].astype(str), first[prefix + "devices"].astype(str),
                      [classes[i] for i in first[prefix + "labels"]], probs, per_seed))
    return predictions_table(classes, parts), classes


def confusion_figure(table, classes: list[str], split: str, title: str):
    """One confusion matrix per device (rows: true scene, columns: predicted), accuracy in each title."""
    import matplotlib  # here, not at the top: pyplot only after choosing the Agg backend

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table.filter(np.array(table.column("split").to_pylist()) == split)
    devices = sorted(set(rows.column("device").to_pylist()), key=lambda d: (d != "a", d))
    probs = np.stack([rows.column(f"p_{c}").to_numpy() for c in classes], axis=1)
    truth = np.array([classes.index(x) for x in rows.column("label").to_pylist()])
    pred = probs.argmax(1)
    device_of = np.array(rows.column("device").to_pylist())
    fig, axes = plt.subplots(1, len(devices), figsize=(4.2 * len(devices), 6.0), squeeze=False, layout="constrained")
    for ax, device in zip(axes[0], devices):
        mask = device_of == device
        matrix = confusion(truth[mask], pred[mask], len(classes))
        ax.imshow(matrix, cmap="Blues")
        for (i, j), n in np.ndenumerate(matrix):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=6,
                        color="white" if n > matrix.max() / 2 else "black")
        ax.set_title(f"device {device.upper()}: {100 * (pred[mask] == truth[mask]).mean():.1f}% of {mask.sum()}")
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
        ax.set_yticks(range(len(classes)), classes if ax is axes[0][0] else [], fontsize=6)
        ax.set_xlabel("predicted")
    axes[0][0].set_ylabel("true")
    fig.suptitle(f"{title}: {split} clips")  # the constrained layout keeps every label inside the figure
    return fig


def log_trial_artifacts(client, uri: str, run_id: str, folder: Path, title: str) -> None:
    """Predictions (Parquet), confusion matrices and the selected epoch's model from a checkpoint folder."""
    import matplotlib.pyplot as plt  # not at the top: importing pyplot picks a backend (confusion_figure asks for Agg)

    runs = seed_folders(folder)
    probs_files = [(name, f / "best_probs.npz") for name, f in runs if (f / "best_probs.npz").is_file()]
    if probs_files and len(probs_files) == len(runs):
        table, classes = trial_predictions(probs_files)
        log_predictions(client, run_id, table)
        for split in sorted(set(table.column("split").to_pylist())):
            fig = confusion_figure(table, classes, split, title)
            client.log_figure(run_id, fig, f"confusion_{split}.png")
            plt.close(fig)
    best_files = [f / "best.pt" for _, f in runs]
    if all(f.is_file() for f in best_files):
        log_model(uri, run_id, best_files, title, [name for name, _ in runs])


def log_model(uri: str, run_id: str, best_files: list[Path], title: str = "", seeds: list[str] = ("",)) -> str:
    """The selected epoch's network (one per seed, averaged with equal weights) as an audio model
    (``search.serving``): each carries its feature configuration, normalisation statistics and
    enhancement, so that ``search predict`` and a fusion feed it features computed from audio exactly
    as its store did. Tags the run with the model's URI."""
    # late: torch; the searcher, warm start and bench-replay import this module and never log a model
    from asc.inference import member_from_checkpoint
    from search.serving import log_audio_model

    members = [member_from_checkpoint(f, source={"run_id": run_id, "trial": title, "seed": seed})
               for f, seed in zip(best_files, seeds)]
    client = MlflowClient(uri)
    drop_earlier_models(client, run_id)
    # MLflow links the run's metrics at one step to the model: the last, where sel_* and eval_* are
    # the kept epoch's figures (each seed's own kept epoch, averaged: this model's figures)
    last = max((m.step for m in client.get_metric_history(run_id, "train_loss")), default=0)
    with tempfile.TemporaryDirectory() as tmp:
        files = [m.save(Path(tmp) / f"member{k}.pt") for k, m in enumerate(members)]
        model_uri = log_audio_model(uri, run_id, files, metadata={
            "epochs": [m.source["epoch"] for m in members], "store": members[0].source["store"],
            "seeds": list(seeds)}, step=last)
    client.set_tag(run_id, MODEL_TAG, model_uri)
    return model_uri


def drop_earlier_models(client, run_id: str) -> int:
    """Remove the models logged from ``run_id`` so far; returns how many. A trial run is tagged with
    its model only once the model is complete, so a model of it found before logging one was left
    half logged by a driver that died while logging it (MLflow registers a model before its files);
    without this, a resumed search would leave the run with two."""
    stale = client.search_logged_models([client.get_run(run_id).info.experiment_id],
                                        filter_string=f"source_run_id = '{run_id}'")
    for model in stale:
        client.delete_logged_model(model.model_id)
    return len(stale)


def close_dangling_runs(uri: str, experiment_id: str, parent_run_id: str, trials: dict) -> int:
    """After a search: a trial run of this search still RUNNING (its driver died before closing it)
    gets its artifacts from the trial's checkpoint if the trial finished, and the status its trial
    ended with. ``trials``: Tune trial id -> (Tune status, checkpoint or None). Returns how many."""
    client = MlflowClient(uri)
    closed = 0
    for run in client.search_runs([experiment_id], filter_string=(
            f"attributes.status = 'RUNNING' and tags.mlflow.parentRunId = '{parent_run_id}'")):
        trial_id = run.data.tags.get(TRIAL_TAG)
        if trial_id is None:
            continue
        if trials and trial_id not in trials:
            # A trial an earlier driver started and died before Tune's experiment state recorded it:
            # the resumed search does not know it (its configuration may be proposed again). Kept, but
            # no longer counted among the search's trials.
            client.set_tag(run.info.run_id, ROLE_TAG, "orphan")
            client.set_tag(run.info.run_id, "note", "the driver died before Tune recorded this trial; "
                                                    "the resumed search ran without it")
        status, checkpoint = trials.get(trial_id, ("", None))
        if status == "TERMINATED" and checkpoint is not None:
            with checkpoint.as_directory() as folder:
                log_trial_artifacts(client, uri, run.info.run_id, Path(folder), run.info.run_name.split(" ")[0])
        client.set_terminated(run.info.run_id, {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(status, "KILLED"))
        closed += 1
    return closed
