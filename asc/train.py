"""``train(config, report) -> result``: the one training loop, the paper's protocol.

Adam, batch 32, ReduceLROnPlateau (max, factor 0.5, patience 3) on the selection metric, N epochs,
mixup on two independently shuffled streams, features memory-mapped from the store with the
configured normalisation and enhancement. After every epoch it evaluates per device, keeps the best
epoch by Metric A or B, writes a checkpoint that resumes to the same result, and calls
``report(epoch, metrics, checkpoint_dir)`` so that a search can prune the run.

Protocols: ``paper`` selects the epoch on the evaluation split (as the paper did); ``validation``
selects on training locations held out from training and reports the evaluation split only at the
end, for the selected epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from asc import REFERENCE_DEVICE
from asc.cli import MAX_SEED
from asc.dataset import VALIDATION_SEED, VALIDATION_SHARE, validation_locations
from asc.enhance import CachedMedianFilter, Enhancement
from asc.errors import AscError, writable_file, writable_folder, write_atomic
from asc.faults import fault_point, injected
from asc.features import FeatureConfig
from asc.inference import installed_versions
from asc.metrics import SELECTION_METRICS, clip_errors, device_metrics, mean_sem, pooled_gaps
from asc.models import ModelConfig, build_model, xception_weights_file
from asc.parallel import process_map
from asc.store import FeatureStore

Report = Callable[[int, dict, str | None], None]


# What last.pt holds (model, optimiser, scheduler, every random state, history, selection, the code
# that wrote it). A checkpoint of another format is refused, never half-read.
CHECKPOINT_FORMAT = 3


@functools.cache
def code_version() -> str:
    """A fingerprint of the ``asc`` package's source: what a run computes is this code's, so a
    checkpoint written by other code (an upgrade between a search and its resume, a node with another
    checkout) is refused rather than resumed into a result neither version would give."""
    return source_fingerprint(sorted(Path(__file__).parent.glob("*.py")))


def source_fingerprint(paths) -> str:
    """Twelve hex digits of the files ``paths``, their names and contents, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes())
    return digest.hexdigest()[:12]


class CheckpointMismatch(AscError):
    """A checkpoint that cannot resume this run: unreadable (truncated mid-write), written by another
    version, of another configuration or of other seeds. ``asc`` refuses it; a search's trial starts
    again from its first epoch instead (``search.trainable``), which computes what an uninterrupted
    run computes."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}; delete it to start over, or use another checkpoint_dir")


def read_checkpoint(path: Path, keys: tuple = ("config", "history", "best", "epoch")) -> dict:
    """A checkpoint file of this project's, whole, or :class:`CheckpointMismatch` saying what is wrong."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        raise CheckpointMismatch(path, f"not a readable checkpoint (truncated, or not torch's: {type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(k in state for k in keys):
        raise CheckpointMismatch(path, "not a training checkpoint of this project")
    if path.name == "last.pt" and state.get("format", 1) != CHECKPOINT_FORMAT:
        raise CheckpointMismatch(path, f"written by another version (checkpoint format {state.get('format', 1)}; "
                                       f"this version reads {CHECKPOINT_FORMAT})")
    if path.name == "last.pt" and state.get("code") != code_version():
        raise CheckpointMismatch(path, f"written by other code (asc source {state.get('code')}; this is "
                                       f"{code_version()})")
    if path.name == "last.pt" and state.get("torch") != torch.__version__:  # its kernels may sum in another order
        raise CheckpointMismatch(path, f"written with torch {state.get('torch')}; this is torch {torch.__version__}")
    return state


def config_differences(there: dict, here: dict, prefix: str = "") -> str:
    """``lr 0.001 there, 0.002 here; model.width ...``: what differs between two config dicts."""
    out = []
    for key in sorted(set(there) | set(here)):
        a, b = there.get(key), here.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = config_differences(a, b, f"{prefix}{key}.")
            if inner:
                out.append(inner)
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            out.append(f"{prefix}{key} {a!r} there, {b!r} here")
    return "; ".join(out)


class Diverged(AscError):
    """The training loss became NaN or infinite: the run stops (a search ends such a trial at its
    last good epoch instead of retrying it, which would diverge the same way). ``epoch``: the epoch
    that diverged; ``seed``: the run's seed."""

    def __init__(self, message: str, epoch: int = 0, seed: int = 0):
        super().__init__(message)
        self.epoch, self.seed = epoch, seed


@dataclass(frozen=True)
class TrainConfig:
    store: str  # a feature store folder (made by `python -m search prepare`)
    model: ModelConfig = field(default_factory=ModelConfig)
    enhancement: Enhancement = field(default_factory=Enhancement)
    mixup_alpha: float = 0.0  # paper: 0.3 (systems 5-7); 0 = no mixup
    epochs: int = 80  # paper
    batch_size: int = 32  # paper
    lr: float = 1e-3  # paper: Adam, 1e-3
    lr_factor: float = 0.5  # paper: ReduceLROnPlateau factor on the selection metric
    lr_patience: int = 3  # paper
    selection: str = "metric_a"  # paper: metric_a (systems A*) or metric_b (systems B*)
    protocol: str = "paper"  # "paper": select on evaluate; "validation": select on held-out train locations
    validation_share: float = VALIDATION_SHARE  # validation protocol: share of the training locations held out
    # Which locations are held out. Not the trial's seed: every trial of a search must be selected on
    # the same clips (and share one median-filter cache, whose statistics come from the rest).
    validation_seed: int = VALIDATION_SEED
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when there is one, else CPU
    bf16: bool = False  # bf16 autocast (GPU)
    channels_last: bool = False  # memory format for convolutions (GPU)
    num_workers: int = 0  # DataLoader worker processes (GPU nodes: several keep the GPU fed)
    checkpoint_dir: str | None = None  # where to checkpoint every epoch and resume from

    def __post_init__(self):
        if self.selection not in SELECTION_METRICS:
            raise AscError(f"selection must be one of {SELECTION_METRICS}, not {self.selection!r}")
        if self.protocol not in ("paper", "validation"):
            raise AscError(f"protocol must be 'paper' or 'validation', not {self.protocol!r}")
        if not (self.mixup_alpha >= 0 and math.isfinite(self.mixup_alpha)) or self.epochs < 1 or self.batch_size < 1 \
                or not (self.lr > 0 and math.isfinite(self.lr)):
            raise AscError(f"mixup_alpha must be >= 0 (not {self.mixup_alpha}); epochs, batch_size and lr positive "
                           f"(not {self.epochs}, {self.batch_size}, {self.lr})")
        if not 0 < self.lr_factor < 1 or self.lr_patience < 0:
            raise AscError(f"lr_factor must be in (0, 1) and lr_patience >= 0, not {self.lr_factor} and {self.lr_patience}")
        if not 0 < self.validation_share < 1:
            raise AscError(f"validation_share must be in (0, 1), not {self.validation_share}")
        for name in ("seed", "validation_seed"):
            if not 0 <= getattr(self, name) <= MAX_SEED:
                raise AscError(f"{name} must be 0 to {MAX_SEED}, not {getattr(self, name)}")
        if self.num_workers < 0:
            raise AscError(f"num_workers must be >= 0, not {self.num_workers}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["model"] = ModelConfig(**d.get("model", {}))
        d["enhancement"] = Enhancement.from_dict(d.get("enhancement", {}))
        return cls(**d)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
class FeatureView:
    """The store's features as a trial sees them: normalised and enhanced, with class labels.

    The median filter is read from the store's cache (built on first use), so an epoch with it costs
    what one without does; normalisation and mean subtraction are cheap and run per batch. Pickles
    as its path (DataLoader workers reopen the memory map instead of copying the features).
    """

    def __init__(self, store: str, enhancement: Enhancement, stats_rows: np.ndarray | None = None,
                 device_median: bool = False):
        """``stats_rows``: the clips whose frames give the normalisation statistics (default: the
        store's whole training split, from its manifest). ``device_median``: the median filter (and
        the mean subtraction after it) runs on the training device, batch by batch (:meth:`finish`),
        instead of from a cache of the whole store on disk (a GPU filters a batch in milliseconds)."""
        self.store_path, self.enhancement = store, enhancement
        self.device_median = device_median and bool(enhancement.steps("batch", cached=True))
        self.mean = self.std = None
        self.subset_stats = stats_rows is not None and enhancement.normalization != "none"
        if self.subset_stats:
            self.mean, self.std = FeatureStore(store).band_statistics(stats_rows)
        self._open()

    def _open(self):
        base = FeatureStore(self.store_path)
        cache_key = self.enhancement.cache_key
        if self.mean is None:
            self.mean, self.std = base.train_mean, base.train_std
            if base.manifest.get("train_mean") is None and self.enhancement.normalization != "none":
                raise AscError(f"{self.store_path}: no training clips, so no statistics to normalise with")
        elif cache_key and self.subset_stats:  # the cached filter output depends on the statistics
            cache_key += "-" + hashlib.sha1(self.mean.tobytes() + self.std.tobytes()).hexdigest()[:10]
        if self.device_median:  # the store normalised here; median and mean subtraction on the device
            self.source = base
            self._post = lambda x: self.enhancement.normalize(x, self.mean, self.std)
        elif cache_key:
            transform = CachedMedianFilter(self.enhancement, tuple(self.mean.tolist()), tuple(self.std.tolist()))
            self.source = base.derived(cache_key, transform, map_fn=process_map)
            self._post = self.enhancement.after_median
        else:
            self.source = base
            self._post = lambda x: self.enhancement(x, self.mean, self.std)
        self.base = base
        self.clips = base.clips
        # the devices of the training split; the others (DCASE 2020's unseen devices) are reported apart
        self.seen_devices = sorted({c.device for c in base.clips if c.split == "train"})
        # the features steps' states for this store's features (DIR: each response's gain per Mel band)
        self.states = {d.name: d.prepare(FeatureConfig(**base.manifest["config"]), **settings)
                       for d, settings in self.enhancement.steps("features")}
        self.classes = list(base.manifest["dataset"]["scenes"])
        self.devices = list(base.manifest["dataset"]["devices"])
        lookup = {c: i for i, c in enumerate(self.classes)}
        self.labels = np.array([lookup.get(c.scene, -1) for c in self.clips], dtype=np.int64)

    def __getstate__(self):
        return {"store_path": self.store_path, "enhancement": self.enhancement, "mean": self.mean, "std": self.std,
                "subset_stats": self.subset_stats, "device_median": self.device_median}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def batch(self, indices: np.ndarray, picks: dict[str, np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of ``indices``. ``picks`` (training with a ``features`` step, DIR): per
        step, per row what its draw picked (-1: none), applied to that clip's stored features before
        everything else; those rows are computed from the store itself, not from a cache."""
        x = self._post(self.source.features(np.sort(indices)).astype(np.float32, copy=False))
        order = np.argsort(np.argsort(indices))  # sorted reads are sequential in the file; restore order
        x = np.ascontiguousarray(x[order])
        hit = np.zeros(len(indices), bool)
        for chosen in (picks or {}).values():
            hit |= chosen >= 0
        if hit.any():
            rows = np.flatnonzero(hit)
            raw = self.base.features(indices[rows]).astype(np.float32)
            for d, _ in self.enhancement.steps("features"):
                chosen = picks[d.name][rows]
                on = chosen >= 0
                raw[on] = d.apply(raw[on], chosen[on], self.states[d.name])
            # rounded as the cached rows beside them were (the cache holds the store's type)
            x[rows] = self.enhancement.normalize(raw, self.mean, self.std) if self.device_median else \
                self.enhancement(raw, self.mean, self.std, cache_dtype=self.base.manifest["dtype"])
        return torch.from_numpy(x), torch.from_numpy(self.labels[indices])

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """What is left to do on the training device (``device_median``): the cached steps (the median
        filter) by their torch twins, then the other batch steps (mean subtraction); nothing otherwise."""
        if not self.device_median:
            return x
        for d, settings in self.enhancement.steps("batch", cached=True):
            x = d.apply_torch(x, **settings)
        # rounded to the store's type, as a cache of it holds the filter's output and as the served
        # model computes it (Enhancement.__call__'s cache_dtype): a float16 store trains as it serves
        filtered = x.to(getattr(torch, self.base.manifest["dtype"])).to(x.dtype)
        return self.enhancement.after_median(filtered)


class _Steps(torch.utils.data.Dataset):
    """One item per optimisation step: a batch from each of the (one or two) shuffled streams.
    ``picks`` (a ``features`` step, DIR): per stream, per step its pick for every position (-1: none),
    drawn for the epoch before the loader starts, so that loader workers draw nothing."""

    def __init__(self, view: FeatureView, streams: list[np.ndarray], batch_size: int,
                 picks: list[dict[str, np.ndarray]] | None = None):
        self.view, self.streams, self.batch_size, self.picks = view, streams, batch_size, picks

    def __len__(self):
        return len(self.streams[0]) // self.batch_size  # the paper's loader drops the last partial batch

    def __getitem__(self, step):
        rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
        return [t for k, stream in enumerate(self.streams)
                for t in self.view.batch(stream[rows], self.picks and {n: a[rows] for n, a in self.picks[k].items()})]


def split_indices(clips: list, config: TrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(train, selection, final-test) indices into ``clips``.

    The validation protocol holds out whole recording locations of the training split
    (:func:`asc.dataset.validation_locations`).
    """
    train = np.array([i for i, c in enumerate(clips) if c.split == "train"], dtype=np.int64)
    evaluate = np.array([i for i, c in enumerate(clips) if c.split == "evaluate"], dtype=np.int64)
    if len(train) == 0 or len(evaluate) == 0:
        raise AscError(f"{config.store}: needs clips in both the train and the evaluate split")
    if config.protocol == "paper":
        return _enough(train, config), _selectable(clips, evaluate, config, "evaluate"), None
    held = validation_locations([clips[i] for i in train], config.validation_share, config.validation_seed)
    val_mask = np.array([(clips[i].scene, clips[i].identifier) in held for i in train])
    if not val_mask.any():
        raise AscError(f"{config.store}: too few training locations to hold some out for validation")
    return _enough(train[~val_mask], config), _selectable(clips, train[val_mask], config, "validation"), evaluate


def check_config(config: TrainConfig) -> tuple[Path | None, FeatureStore, tuple]:
    """Everything about ``config`` that can be checked without training: the device, the checkpoint
    folder (made), the store, the split and selection, the spectrum correction's fit and the ImageNet
    weights file. :class:`Training` starts with it; ``compare`` calls it for every system before the
    first trains, so that the last one's mistake does not cost the first ones. Returns the checkpoint
    folder, the opened store and :func:`split_indices`."""
    _device(config)
    ckpt_dir = writable_folder(config.checkpoint_dir, "checkpoint_dir") if config.checkpoint_dir else None
    store = FeatureStore(config.store)
    _check_correction(store, config)
    splits = split_indices(store.clips, config)
    model = config.model
    if model.name == "msxception" and model.pretrained and not model.allow_download:  # a download is tried later
        xception_weights_file(model.weights)
    return ckpt_dir, store, splits


def _check_correction(store: FeatureStore, config: TrainConfig) -> None:
    """Under the validation protocol, a spectrum-corrected store must have fitted its coefficients
    without the locations this run validates on (asc.store.CORRECTION_RECIPE)."""
    if config.protocol != "validation" or not store.config.spectrum_correction:
        return
    recipe = store.manifest.get("correction") or {}
    if (recipe.get("validation_share"), recipe.get("validation_seed")) != (config.validation_share, config.validation_seed):
        fitted = ("on every training pair (a store made before this rule: run prepare again)" if not recipe else
                  f"without the locations of validation_share {recipe['validation_share']}, seed {recipe['validation_seed']}")
        raise AscError(f"{config.store}: its spectrum correction was fitted {fitted}, so it has seen the locations "
                       f"this run validates on (validation_share {config.validation_share}, seed {config.validation_seed})")


def _selectable(clips: list, select: np.ndarray, config: TrainConfig, what: str) -> np.ndarray:
    """Metric B is undefined without clips of the reference device and of another: refuse to select
    by it on such clips (before any training) instead of selecting by a single device's accuracy."""
    devices = sorted({clips[i].device for i in select})
    if config.selection == "metric_b" and (REFERENCE_DEVICE not in devices or devices == [REFERENCE_DEVICE]):
        raise AscError(f"{config.store}: selection by metric_b needs {what} clips of the reference device "
                       f"{REFERENCE_DEVICE!r} and of another device; they have devices {devices} (select by metric_a)")
    pooled, missing = pooled_gaps(devices, {c.device for c in clips if c.split == "train"})
    if config.selection == "metric_b" and missing:
        more = "hold out more locations (validation_share)" if config.protocol == "validation" else \
            "an evaluation split with clips of each"
        raise AscError(f"{config.store}: selection by metric_b pools devices {', '.join(d.upper() for d in pooled)} "
                       f"(seen in training), but the {what} clips hold none of device "
                       f"{', '.join(d.upper() for d in missing)}: its B&C would be the others' alone ({more}, or "
                       "select by metric_a)")
    return select


def _enough(train: np.ndarray, config: TrainConfig) -> np.ndarray:
    if len(train) < config.batch_size:  # the loader drops partial batches: an epoch would train nothing
        raise AscError(f"{config.store}: {len(train)} training clips, fewer than one batch of {config.batch_size}")
    return train


# --------------------------------------------------------------------------------------------------
# Loop
# --------------------------------------------------------------------------------------------------
def _device(config: TrainConfig) -> torch.device:
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(config.device)
        except RuntimeError as exc:
            raise AscError(f"device {config.device!r}: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise AscError(f"device {config.device!r}: no CUDA device here (use 'auto' or 'cpu')")
    if device.type == "cuda":
        _deterministic_cuda()
    return device


def _deterministic_cuda() -> None:
    """cuDNN's deterministic kernels, chosen the same way every run (no autotuning), and cuBLAS's fixed
    workspace: what a run resumed from its checkpoint needs to compute what the uninterrupted run does
    (the CPU's kernels already are). Whether it does on a GPU, and at what cost, is not measured yet."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts, at the first matmul
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def mix(x1: torch.Tensor, x2: torch.Tensor, lam: float) -> torch.Tensor:
    """The paper's eq. 7 on inputs: lambda * x1 + (1 - lambda) * x2 (new tensor)."""
    return lam * x1 + (1 - lam) * x2


def mixup_loss(logits: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor, lam: float) -> torch.Tensor:
    """The paper's mixup loss: lambda * CE(y1) + (1 - lambda) * CE(y2)."""
    return lam * F.cross_entropy(logits, y1) + (1 - lam) * F.cross_entropy(logits, y2)


@torch.no_grad()
def predict(model: torch.nn.Module, view: FeatureView, indices: np.ndarray, device: torch.device,
            config: TrainConfig, batch_size: int = 64) -> np.ndarray:
    """Class probabilities ``[len(indices), n_classes]`` (model in eval mode). Always in float32, also
    for a run that trains under bf16: the served model (``asc.inference``) scores in float32, and the
    selection, the predictions fusion chooses on and the served model must agree."""
    model.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        x, _ = view.batch(indices[start:start + batch_size])
        x = view.finish(x.to(device))
        if config.channels_last:
            x = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)
        out.append(torch.softmax(model(x).float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(view.classes)), np.float32)


def evaluate(model, view: FeatureView, indices: np.ndarray, device, config: TrainConfig) -> tuple[dict, np.ndarray]:
    probs = predict(model, view, indices, device, config)
    labels = view.labels[indices]
    metrics = device_metrics(labels, probs.argmax(1), [view.clips[i].device for i in indices], len(view.classes),
                             seen=view.seen_devices)
    metrics["loss"] = float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).mean())
    return metrics, probs


def make_optimizer(model: torch.nn.Module, config: TrainConfig):
    """The paper's Adam and its ReduceLROnPlateau on the (maximised) selection metric."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config.lr_factor,
                                                           patience=config.lr_patience)
    return optimizer, scheduler


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint whole


def _atomic_savez(path: Path, **arrays) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


# Settings that change where or how fast a run goes, not what it computes: a checkpoint resumes
# across them (more epochs, another folder, more loader workers, another GPU).
RUNTIME_FIELDS = ("checkpoint_dir", "num_workers", "device", "epochs")


def _run_defining(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RUNTIME_FIELDS}


def scalars(metrics: dict) -> dict:
    """The float entries of a metrics dict (what goes into tables, reports and trackers)."""
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def _rng_state(device: torch.device) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class Training:
    """One run of the loop, an epoch at a time: :func:`train` runs one to the end; :func:`train_seeds`
    runs several in lockstep. Each keeps its own random state (torch, NumPy, Python), swapped in for
    its epochs, so that a run in lockstep computes what it would have computed alone."""

    def __init__(self, config: TrainConfig, log: Callable[[str], None] | None = None, evaluate_best: bool = False):
        self.start_time = time.perf_counter()
        self.config, self.log, self.evaluate_best = config, log, evaluate_best
        _seed_everything(config.seed)
        self.device = device = _device(config)
        # before any work: a run must not train for hours and then fail to write its checkpoint
        self.ckpt_dir, _, (self.train_idx, self.select_idx, self.test_idx) = check_config(config)
        # The validation protocol normalises with the statistics of the clips it trains on only.
        self.view = view = FeatureView(config.store, config.enhancement,
                                       self.train_idx if self.test_idx is not None else None,
                                       device_median=device.type == "cuda")
        self.is_reference = np.array([c.device == REFERENCE_DEVICE for c in view.clips])  # DIR's clips
        self.model_config = dataclasses.replace(config.model, n_classes=len(view.classes))
        self.model = build_model(self.model_config).to(device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer, self.scheduler = make_optimizer(self.model, config)
        self.history: list[dict] = []
        self.best = {"epoch": 0, "value": -math.inf}
        self.correct = None  # the latest epoch's per-clip correctness on the selection clips
        self.best_state: dict | None = None
        self.epoch = 0
        if self.ckpt_dir is not None:
            self._resume()
        self.rng = _rng_state(device)
        if log:
            log(_header(view))

    def _resume(self) -> None:
        ckpt_dir, config = self.ckpt_dir, self.config
        path = ckpt_dir / "last.pt"
        if not path.is_file():
            return
        state = read_checkpoint(path)
        differs = config_differences(_run_defining(state["config"]), _run_defining(config.to_dict()))
        if differs:
            raise CheckpointMismatch(path, f"a checkpoint of another configuration ({differs})")
        if state["epoch"] > config.epochs:
            raise AscError(f"{path}: already {state['epoch']} epochs, more than the {config.epochs} "
                           "asked for; ask for as many or more, or use another checkpoint_dir")
        if state["best"].get("epoch", 0) > 0:
            read_checkpoint(ckpt_dir / "best.pt", keys=("model", "model_config"))  # the selected epoch's, whole
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:  # tensors of another shape or name
            raise CheckpointMismatch(path, f"its model or optimiser does not fit this run's "
                                           f"({str(exc).splitlines()[0][:120]})") from None
        _set_rng_state({"torch": state["torch_rng"], "numpy": state["numpy_rng"], "python": state["python_rng"],
                        "cuda": state.get("cuda_rng")}, self.device)
        self.history, self.best, self.epoch = state["history"], state["best"], state["epoch"]

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.epochs

    def run_epoch(self) -> dict:
        """Train and evaluate the next epoch, checkpoint it; returns what ``report`` receives."""
        config, view, device, model = self.config, self.view, self.device, self.model
        _set_rng_state(self.rng, device)
        epoch = self.epoch + 1
        epoch_start = time.perf_counter()
        # Each epoch's shuffles and mixup coefficients come from (seed, epoch): a resumed run draws
        # exactly what the uninterrupted one would have.
        rng = np.random.default_rng([config.seed, epoch])
        streams = [rng.permutation(self.train_idx)]
        if config.mixup_alpha > 0:
            streams.append(rng.permutation(self.train_idx))
        # the features steps' picks (DIR: a response for a share p of the device-A clips), stream by stream
        steps = config.enhancement.steps("features")
        picks = [{d.name: d.draw(rng, st, self.is_reference, view.states[d.name], **settings) for d, settings in steps}
                 for st in streams] if steps else None
        loader = torch.utils.data.DataLoader(
            _Steps(view, streams, config.batch_size, picks), batch_size=None, shuffle=False,
            num_workers=config.num_workers, pin_memory=device.type == "cuda",
            persistent_workers=False, prefetch_factor=4 if config.num_workers else None)
        model.train()
        total_loss, steps, waited = 0.0, 0, 0.0
        enh_label = config.enhancement.label()  # names a test's injected divergence (below)
        fetch_start = time.perf_counter()
        for batch in loader:
            waited += time.perf_counter() - fetch_start
            x1, y1 = view.finish(batch[0].to(device, non_blocking=True)), batch[1].to(device, non_blocking=True)
            if len(batch) == 4:
                lam = float(rng.beta(config.mixup_alpha, config.mixup_alpha))
                x2, y2 = view.finish(batch[2].to(device, non_blocking=True)), batch[3].to(device, non_blocking=True)
                x = mix(x1, x2, lam)
            else:
                lam, x, y2 = 1.0, x1, y1
            x = config.enhancement.on_input(x, rng)  # Freq-MixStyle: training only, on the model's input
            if config.channels_last:
                x = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                logits = model(x)
            loss = mixup_loss(logits.float(), y1, y2, lam)
            value = loss.item()
            if injected("nan_loss", lr=f"{config.lr:g}", enh=enh_label, epoch=epoch):  # a test's divergence (asc.faults)
                value = math.nan
            if not math.isfinite(value):  # before the step: the last checkpoint stays the last good epoch
                kept = (f"the checkpoint of epoch {epoch - 1} is kept" if self.ckpt_dir is not None and epoch > 1
                        else "nothing was saved")
                raise Diverged(f"epoch {epoch}, step {steps + 1}: the training loss is {value} (learning rate "
                               f"{self.optimizer.param_groups[0]['lr']:g}); stopped, {kept} (a lower lr, or check "
                               f"the features of {config.store})", epoch=epoch, seed=config.seed)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total_loss += value
            steps += 1
            fault_point("step", seed=config.seed, epoch=epoch, step=steps)
            fetch_start = time.perf_counter()
        train_seconds = time.perf_counter() - epoch_start
        metrics, probs = evaluate(model, view, self.select_idx, device, config)
        self.correct = probs.argmax(1) == view.labels[self.select_idx]  # per clip: a lockstep's clip errors
        value = metrics[config.selection]
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with; the step may lower the next
        self.scheduler.step(value)
        row = {"epoch": epoch, "train_loss": total_loss / max(steps, 1), "lr": lr,
               "seconds": time.perf_counter() - epoch_start, "train_seconds": train_seconds,
               "data_wait_share": waited / train_seconds if train_seconds else 0.0,
               "train_clips_per_s": steps * config.batch_size / train_seconds if train_seconds else 0.0,
               **scalars(metrics), "class_acc": dict(zip(view.classes, metrics["class_acc"]))}
        self.history.append(row)
        best, ckpt_dir, test_idx = self.best, self.ckpt_dir, self.test_idx
        improved = value > best["value"]
        test_probs = None
        if improved:
            best = self.best = {"epoch": epoch, "value": value, "metrics": scalars(metrics), "correct": self.correct}
            if test_idx is not None and ckpt_dir is None:  # no best.pt to come back to: keep it here
                self.best_state = copy.deepcopy(model.state_dict())
            if self.evaluate_best and test_idx is not None:
                test_metrics, test_probs = evaluate(model, view, test_idx, device, config)
                best["test"] = _test_summary(test_metrics, view)
                best["test_correct"] = test_probs.argmax(1) == view.labels[test_idx]
        if ckpt_dir is not None:
            if improved:
                _atomic_save({"model": model.state_dict(), "model_config": dataclasses.asdict(self.model_config),
                              "classes": view.classes, "epoch": epoch, "metrics": metrics,
                              "enhancement": dataclasses.asdict(config.enhancement), "store": config.store,
                              # what the model's input was normalised with (asc.inference rebuilds it from audio)
                              "norm_mean": view.mean, "norm_std": view.std,
                              "packages": installed_versions()},  # what a logged model of it pins
                             ckpt_dir / "best.pt")
                _atomic_savez(ckpt_dir / "best_probs.npz", classes=np.array(view.classes),
                              **_prediction_arrays(view, self.select_idx, probs),
                              **({} if test_probs is None else _prediction_arrays(view, test_idx, test_probs, "test_")))
            fault_point("checkpoint", seed=config.seed, epoch=epoch)  # best.pt new, last.pt not yet
            _atomic_save({"model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
                          "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                          "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
                          "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                          "history": self.history, "best": best, "epoch": epoch, "config": config.to_dict(),
                          "format": CHECKPOINT_FORMAT, "code": code_version(),
                          "torch": torch.__version__},
                         ckpt_dir / "last.pt")
        self.epoch = epoch
        self.rng = _rng_state(device)
        fault_point("epoch_end", seed=config.seed, epoch=epoch)  # checkpointed; in lockstep the next seeds are behind
        if self.log:
            self.log(_row(row, view, improved))
        return {**metrics, **row, "best_epoch": best["epoch"], "best_" + config.selection: best["value"],
                "best_metrics": best.get("metrics", {}),
                # the paper protocol selects on the evaluation split: its figures are the same
                "best_test": best.get("metrics", {}) if test_idx is None else scalars(best.get("test", {}))}

    def result(self) -> dict:
        """The result of the best epoch (see the module docstring)."""
        config, best, test_idx = self.config, self.best, self.test_idx
        best_row = next(r for r in self.history if r["epoch"] == best["epoch"])
        result = {
            "best_epoch": best["epoch"],
            "selection": config.selection,
            "protocol": config.protocol,
            "best": {k: v for k, v in best_row.items() if k not in ("epoch",)},
            "history": self.history,
            "classes": self.view.classes,
            "config": config.to_dict(),
            "seconds": time.perf_counter() - self.start_time,
            "checkpoint": str(self.ckpt_dir / "best.pt") if self.ckpt_dir else None,
        }
        if test_idx is not None and "test" in best:  # evaluated when the epoch was selected (evaluate_best)
            result["test"] = best["test"]
        elif test_idx is not None:
            best_state = self.best_state
            if self.ckpt_dir is not None:
                best_state = torch.load(self.ckpt_dir / "best.pt", map_location="cpu", weights_only=False)["model"]
            self.model.load_state_dict(best_state)
            test_metrics, _ = evaluate(self.model, self.view, test_idx, self.device, config)
            result["test"] = _test_summary(test_metrics, self.view)
        else:
            result["test"] = result["best"]
        return result


def train(config: TrainConfig, report: Report | None = None, log: Callable[[str], None] | None = None,
          evaluate_best: bool = False) -> dict:
    """Train one model; returns the result of the best epoch (see module docstring).

    ``log`` receives one formatted table line per epoch (the CLI prints them). ``evaluate_best``
    (the validation protocol, for a search that may stop the run at any epoch): whenever the
    selected epoch changes, also evaluate it on the evaluation split, report those figures as
    ``best_test`` and keep its probabilities in ``best_probs.npz`` (never used to select).
    """
    check_seed_folders(config.checkpoint_dir, None)
    run = Training(config, log, evaluate_best)
    while not run.done:
        metrics = run.run_epoch()
        if report is not None:
            report(run.epoch, metrics, str(run.ckpt_dir) if run.ckpt_dir else None)
    return run.result()


def check_seed_folders(checkpoint_dir: str | None, seeds: list[int] | None) -> None:
    """A checkpoint folder holds one run (``last.pt``) or several seeds' (``seed<seed>/last.pt``):
    refuse a folder of the other kind, or of seeds this run does not train (``seeds`` None: one run).
    Seeds this run trains that have no checkpoint yet start from scratch and catch up."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return
    folder = Path(checkpoint_dir)
    saved = sorted(int(p.parent.name[4:]) for p in folder.glob("seed*/last.pt") if p.parent.name[4:].isdigit())
    if seeds is None and saved:
        raise CheckpointMismatch(folder, f"holds the checkpoints of seeds {saved}, trained together; this run "
                                         "trains one")
    if seeds is not None and (folder / "last.pt").is_file():
        raise CheckpointMismatch(folder / "last.pt", f"a one-seed run's checkpoint; this run trains seeds {seeds}")
    if seeds is not None and not set(saved) <= set(seeds):
        raise CheckpointMismatch(folder, f"holds the checkpoints of seeds {saved}; this run trains seeds {seeds}")


def seed_checkpoint_dir(checkpoint_dir: str | None, seed: int) -> str | None:
    """Where the run of ``seed`` keeps its checkpoints inside a several-seed run's folder."""
    return None if checkpoint_dir is None else str(Path(checkpoint_dir) / f"seed{seed}")


def mean_and_sem(reports: list[dict]) -> dict:
    """Every number of ``reports`` (one dict per seed, the same keys) as its mean over the seeds, and
    beside it its standard error ``<name>_sem`` (nan for one seed). Nested dicts are combined the
    same way; other values are taken from the first report."""
    out: dict = {}
    for key, value in reports[0].items():
        if isinstance(value, bool) or not isinstance(value, (int, float, dict)):
            out[key] = value
        elif isinstance(value, dict):
            out[key] = mean_and_sem([r.get(key, {}) for r in reports])
        elif key.endswith("_cse"):  # an error itself: its mean, which seeds_clip_errors replaces where it can
            out[key] = mean_sem([r.get(key, math.nan) for r in reports])[0]
        else:
            out[key], out[key + "_sem"] = mean_sem([r.get(key, math.nan) for r in reports])
    return out


def seeds_clip_errors(runs: list["Training"], epoch: dict | None = None, best: dict | None = None,
                      test: dict | None = None) -> None:
    """The clip errors (``<figure>_cse``) of the seeds' mean figures, in place: ``epoch`` (the latest
    epoch's, selection clips), ``best`` (the selected epochs', selection clips) and ``test`` (the
    selected epochs' on the evaluation split), from each clip's correctness averaged over the seeds
    (``asc.metrics``): the seeds are scored on the same clips, and the mean of their own clip errors
    would overstate the error of their mean. A run resumed from a checkpoint that predates the
    per-clip record keeps that mean."""
    view, select_idx, test_idx = runs[0].view, runs[0].select_idx, runs[0].test_idx

    def update(figures: dict | None, correct: list, indices: np.ndarray) -> None:
        if figures and all(c is not None for c in correct):
            figures.update(clip_errors(np.mean(correct, axis=0), [view.clips[i].device for i in indices],
                                       seen=view.seen_devices))

    update(epoch, [r.correct for r in runs], select_idx)
    update(best, [r.best.get("correct") for r in runs], select_idx)
    if test_idx is None:  # the paper protocol: the selected epoch's figures are the evaluation split's
        update(test, [r.best.get("correct") for r in runs], select_idx)
    else:
        update(test, [r.best.get("test_correct") for r in runs], test_idx)


def train_seeds(config: TrainConfig, seeds: list[int], report: Report | None = None,
                log: Callable[[str], None] | None = None, evaluate_best: bool = False) -> dict:
    """Train ``config`` once per seed, epoch by epoch in lockstep (each run as :func:`train` would
    with that seed; their checkpoints in ``checkpoint_dir/seed<seed>``).

    After every epoch ``report(epoch, metrics, checkpoint_dir)`` receives the mean over the seeds of
    every number and its standard error (:func:`mean_and_sem`), and each seed's own report under
    ``per_seed`` ({seed: metrics}). Returns {"seeds", "results" (one :func:`train` result per seed),
    "best" and "test" (means and standard errors of the seeds' selected epochs)}."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise AscError(f"seeds must be distinct, at least one: {seeds}")
    check_seed_folders(config.checkpoint_dir, list(seeds))
    runs = []
    for seed in seeds:
        prefix = (lambda s: (lambda line: log(f"seed {s:<3} {line}")))(seed) if log else None
        runs.append(Training(dataclasses.replace(config, seed=seed,
                                                 checkpoint_dir=seed_checkpoint_dir(config.checkpoint_dir, seed)),
                             prefix, evaluate_best))
    # Checkpoints of one lockstep are taken after every seed's epoch, but a run interrupted between
    # two seeds' checkpoints resumes with some seeds an epoch behind: they catch up first.
    ahead = max(run.epoch for run in runs)
    for run in runs:
        while run.epoch < ahead:
            run.run_epoch()
    while not all(run.done for run in runs):
        reports = [run.run_epoch() for run in runs]
        if report is not None:
            combined = mean_and_sem(reports)
            seeds_clip_errors(runs, combined, combined.get("best_metrics"), combined.get("best_test"))
            combined["epoch"] = reports[0]["epoch"]
            combined["best_epoch"] = int(round(combined["best_epoch"]))
            combined["per_seed"] = dict(zip(seeds, reports))
            report(reports[0]["epoch"], combined, config.checkpoint_dir)
    results = [run.result() for run in runs]
    best, test = (mean_and_sem([scalars(r[k]) for r in results]) for k in ("best", "test"))
    seeds_clip_errors(runs, best=best, test=test)
    return {"seeds": list(seeds), "results": results, "best": best, "test": test}


def _test_summary(metrics: dict, view: FeatureView) -> dict:
    """The evaluation split's figures of the selected epoch, as a result holds them."""
    return {**scalars(metrics), "class_acc": dict(zip(view.classes, metrics["class_acc"])),
            "confusion": metrics["confusion"]}


def _prediction_arrays(view: FeatureView, indices: np.ndarray, probs: np.ndarray, prefix: str = "") -> dict:
    """What fusion needs of a prediction: clip names, devices, true labels and probabilities."""
    return {prefix + "probs": probs, prefix + "filenames": np.array([view.clips[i].filename for i in indices]),
            prefix + "devices": np.array([view.clips[i].device for i in indices]),
            prefix + "labels": view.labels[indices]}


def _columns(view: FeatureView) -> list[str]:
    """Accuracy of every device the store has (a, b, c in 2019; later sets add more), then the summaries."""
    unseen = ["acc_unseen"] if set(view.devices) - set(view.seen_devices) else []
    return [f"acc_{d}" for d in view.devices] + ["acc_bc", *unseen, "metric_a", "metric_b", "device_gap"]


def _header(view: FeatureView) -> str:
    return (f"{'epoch':>5} {'loss':>7} " + " ".join(f"{c:>8}" for c in _columns(view))
            + f" {'lr':>8} {'s':>6}")


def _row(row: dict, view: FeatureView, improved: bool) -> str:
    cells = " ".join(f"{row.get(c, math.nan):>8.3f}" for c in _columns(view))
    return (f"{row['epoch']:>5} {row['train_loss']:>7.3f} {cells} {row['lr']:>8.1e} {row['seconds']:>6.1f}"
            + (" *" if improved else ""))


def _json_safe(value):
    """NaN (a device with no clips) as null: strict JSON readers reject the bare NaN token."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(result: dict, path: str | Path) -> None:
    """``result`` as strict JSON, written aside and renamed into place (callers check the path with
    :func:`asc.errors.writable_file` before the work whose result it is)."""
    path = writable_file(path, "json_out")
    try:
        write_atomic(path, json.dumps(_json_safe(result), indent=1, default=float, allow_nan=False))
    except OSError as exc:
        raise AscError(f"{path}: cannot be written ({exc.strerror or exc})") from None
