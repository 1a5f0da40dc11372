"""The feature store: log-Mel spectrograms in Arrow IPC files that every trial memory-maps.

Layout of a store root (a local or shared, e.g. NFS, folder)::

    STORE/
      logmel128-<hash>/             one folder per feature configuration x dataset fingerprint
        _manifest.json              configuration, fingerprint, counts, shape, dtype, training statistics
        part-00000.arrow ...        Arrow IPC files, one record batch each: a row per clip
        _correction.npy             spectrum correction coefficients (spectrum-corrected stores only)
        _derived/<name>/part-*.arrow enhanced copies cached for trials (e.g. median-filtered)
      .staging/                     stores being written (never read)
      .locks/                       one lock file per store name

Columns: ``filename`` (as in meta.csv), ``scene``, ``city``, ``location``, ``segment``, ``device``,
``split``, ``group`` (strings, null where unknown) and ``logmel``, an ``arrow.fixed_shape_tensor`` of
float32 (or float16) with shape ``[n_mels, frames]``. ``pyarrow.dataset.dataset(folder, format="arrow")``
reads a store with nothing from this project.

A store is written under ``.staging`` and renamed into place, under a per-name file lock: a reader
never sees half a store, a killed build leaves nothing visible, and two builds of the same store end
with one good copy. Its name hashes the configuration and the dataset's fingerprint (every audio
file's name, size and modification time, and every clip's labels and split), so changed, added or
removed audio gives a new name and a rebuild, and an unchanged dataset gives the same name and no work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
from filelock import FileLock, Timeout

from asc import REFERENCE_DEVICE
from asc.dataset import VALIDATION_SEED, VALIDATION_SHARE, Clip, Dataset, audio_info, read_dataset, validation_locations
from asc.errors import AscError
from asc.faults import fault_point
from asc.features import FeatureConfig, check_finite, correction_coefficients, load_audio, log_mels, mean_magnitude_spectrum
from asc.parallel import serial_map

FORMAT_VERSION = 1
MANIFEST = "_manifest.json"  # "_" prefixes: pyarrow.dataset skips them when reading the folder
META_COLUMNS = ("filename", "scene", "city", "location", "segment", "device", "split", "group")


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------
def dataset_fingerprint(dataset: Dataset) -> str:
    """Hash of what a store's content depends on: every clip's file (name, size, mtime) and labels.

    Size and modification time, as make and rsync use, instead of the audio bytes: hashing 40 GB of
    WAVs would cost more than extracting the features.
    """
    h = hashlib.sha256()
    for clip in dataset.clips:
        stat = os.stat(dataset.path(clip))
        h.update(f"{clip.filename}\t{stat.st_size}\t{stat.st_mtime_ns}\t{clip.split}\t{clip.scene}\n".encode())
    return h.hexdigest()


def _local_root(store_root: str | Path) -> Path:
    """The store root as a local path. Atomic publish needs a directory rename, which object stores
    (s3://, gs://) do not have, so they are refused instead of half-supported."""
    if "://" in str(store_root):
        raise AscError(f"{store_root}: object-store URIs are not supported; use a local or shared (NFS) folder")
    return Path(store_root)


# Spectrum-correction coefficients come from the training split's parallel pairs less those of the
# locations the validation protocol holds out (asc.dataset.validation_locations, its defaults): a
# search that selects on those locations must not have fitted anything on them. Part of a corrected
# store's name, so stores made before the rule are rebuilt, and written into its manifest, so that
# training under another validation split can refuse the store.
CORRECTION_RECIPE = {"fitted_on": "train less validation locations", "validation_share": VALIDATION_SHARE,
                     "validation_seed": VALIDATION_SEED}


def store_name(config: FeatureConfig, fingerprint: str) -> str:
    payload = [config.to_dict(), fingerprint] + ([CORRECTION_RECIPE] if config.spectrum_correction else [])
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    prefix = "logmel-sc" if config.spectrum_correction else "logmel"
    return f"{prefix}{config.n_mels}-{digest[:16]}"


# --------------------------------------------------------------------------------------------------
# Shards: the unit of work of a build (one Ray task, or one loop iteration without Ray)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardTask:
    """Extract one shard of clips for several configurations (one STFT per clip)."""

    index: int
    data_root: str
    clips: tuple[Clip, ...]
    configs: tuple[FeatureConfig, ...]
    out_dirs: tuple[str, ...]  # one staging folder per config
    corrections: dict  # {device: coefficients} for spectrum-corrected configs, else {}

    @property
    def file_name(self) -> str:
        return f"part-{self.index:05d}.arrow"


def write_table_file(path: str | Path, clips: Sequence[Clip], features: np.ndarray) -> None:
    """One Arrow IPC file, one record batch: metadata columns plus the ``logmel`` tensor column."""
    columns = {name: pa.array([getattr(c, name) for c in clips], pa.string()) for name in META_COLUMNS}
    columns["logmel"] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(features))
    batch = pa.record_batch(columns)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)


def run_shard(task: ShardTask) -> dict:
    """Extract and write one shard. Returns per-config training-split sums for the band statistics.

    Returns {"clips": n, "seconds": s, "stats": [(sum[n_mels], sum of squares[n_mels], frames) per config]}.
    """
    start = time.perf_counter()
    configs, root = task.configs, Path(task.data_root)
    reference = configs[0]
    features = [[] for _ in configs]
    for clip in task.clips:
        path = root / clip.filename
        y = load_audio(path, reference.sample_rate, reference.resample)
        plain = [i for i, c in enumerate(configs) if not c.spectrum_correction]
        corrected = [i for i, c in enumerate(configs) if c.spectrum_correction]
        for group, correction in ((plain, None), (corrected, task.corrections.get(clip.device))):
            if not group:
                continue
            for i, x in zip(group, log_mels(y, [configs[i] for i in group], correction)):
                check_finite(x, y, path, configs[i])
                if features[i] and x.shape != features[i][0].shape:
                    raise _length_error(f"{path}: {len(y) / reference.sample_rate:.2f} s", x.shape[-1],
                                        task.clips[0].filename, features[i][0].shape[-1])
                features[i].append(x)
    stats = []
    is_train = np.array([c.split == "train" for c in task.clips])
    for config, out_dir, xs in zip(configs, task.out_dirs, features):
        x = np.stack(xs)
        write_table_file(Path(out_dir) / task.file_name, task.clips, x)
        train = x[is_train].astype(np.float64)
        stats.append((train.sum(axis=(0, 2)), (train**2).sum(axis=(0, 2)), train.shape[0] * train.shape[2], x.shape[1:]))
    fault_point("shard_written", shard=task.index)
    return {"clips": len(task.clips), "seconds": time.perf_counter() - start, "stats": stats}


def run_pair_spectra(data_root: str, pairs: Sequence[tuple[Clip, Clip]], config: FeatureConfig) -> list:
    """Mean magnitude spectra of parallel (reference, device) pairs: ``[(device, ref, dev), ...]``."""
    out = []
    for ref, dev in pairs:
        spectra = [mean_magnitude_spectrum(load_audio(Path(data_root) / c.filename, config.sample_rate, config.resample),
                                           config) for c in (ref, dev)]
        out.append((dev.device, *spectra))
    return out


# --------------------------------------------------------------------------------------------------
# Build and publish
# --------------------------------------------------------------------------------------------------
@dataclass
class BuildReport:
    built: list[str]  # store folders written by this call
    up_to_date: list[str]  # store folders that already existed
    clips: int  # clips extracted (0 when everything was up to date)
    seconds: float
    damaged: dict = field(default_factory=dict)  # {store folder: what was wrong} for the built ones rebuilt


def shard_clips(clips: Sequence[Clip], shard_size: int) -> list[tuple[Clip, ...]]:
    return [tuple(clips[i:i + shard_size]) for i in range(0, len(clips), shard_size)]


def build_stores(
    dataset: Dataset,
    configs: Iterable[FeatureConfig],
    store_root: str | Path,
    map_fn: Callable = serial_map,
    shard_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> BuildReport:
    """Extract ``dataset`` for every configuration not already in ``store_root`` and publish each store.

    ``map_fn(fn, items, on_result)`` runs shard tasks (in this process by default; over Ray tasks
    from ``search.prepare``) and ``progress(clips)`` is called as shards finish. Clips are extracted
    once for all the configurations that share an STFT.
    """
    start = time.perf_counter()
    root = _local_root(store_root)
    configs = list(dict.fromkeys(configs))
    if not configs:
        raise AscError("no feature configuration asked for")
    rates = {(c.sample_rate, c.resample) for c in configs}
    if len(rates) > 1:
        raise AscError("one build reads the audio once: every configuration needs the same sample rate")
    if shard_size < 1:
        raise AscError(f"shard_size must be at least 1, not {shard_size}")
    if not dataset.clips:
        raise AscError(f"{dataset.root}: no clips to extract")
    fingerprint = dataset_fingerprint(dataset)
    # Locks are taken in name order, whatever order the user listed the configurations in: two
    # builds asking for the same stores in different orders would otherwise deadlock.
    named = sorted(((store_name(c, fingerprint), c) for c in configs), key=lambda pair: pair[0])
    report = BuildReport([], [], 0, 0.0)
    if all(_intact(root / name) for name, _ in named):  # nothing to write: a read-only store root is fine
        report.up_to_date = [str(root / name) for name, _ in named]
        report.seconds = time.perf_counter() - start
        return report
    held: list[FileLock] = []
    made = not root.exists()  # a refused build takes back the store root it made (below)
    try:
        todo = []
        try:
            for sub in (".staging", ".locks"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            for name, config in named:
                lock = FileLock(str(root / ".locks" / f"{name}.lock"))
                lock.acquire()  # a concurrent build of the same store finishes first; then ours is a no-op
                held.append(lock)
                if (root / name / MANIFEST).is_file():
                    damage = store_damage(root / name)
                    if damage is None:
                        report.up_to_date.append(str(root / name))
                        continue
                    report.damaged[str(root / name)] = damage
                    _discard(root / name, root / ".staging")  # rebuilt below under the same name
                for stale in (root / ".staging").glob(f"{name}-*"):  # left by a killed build (we hold the lock)
                    shutil.rmtree(stale, ignore_errors=True)
                todo.append((config, name))
        except OSError as exc:  # e.g. a read-only root that lacks a store asked for
            raise AscError(f"{root}: cannot write a feature store here ({exc.strerror or exc})") from None
        if todo:
            report.clips = len(dataset)
            report.built = _build(dataset, todo, root, fingerprint, map_fn, shard_size, progress)
    except BaseException:
        for lock in held:
            lock.release()
        held = []
        if made:
            _remove_if_bare(root, [name for name, _ in named])
        raise
    finally:
        for lock in held:
            lock.release()
    report.seconds = time.perf_counter() - start
    return report


def _remove_if_bare(root: Path, names) -> None:
    """Remove a store root this build made and published nothing into: the lock files of ``names`` (each
    only while no other build holds it: then the root is another build's too and stays) and the empty
    folders (rmdir removes nothing that is not empty, so a store another build published stays)."""
    for name in names:
        path = root / ".locks" / f"{name}.lock"
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return
        try:
            path.unlink(missing_ok=True)
        finally:
            lock.release()
    for folder in (root / ".staging", root / ".locks", root):
        with contextlib.suppress(OSError):
            folder.rmdir()


def store_damage(path: Path, manifest: dict | None = None) -> str | None:
    """What is wrong with a published store's files, or None when they are as its manifest records:
    a shard missing or of another size (a manifest older than the recorded sizes: a shard whose
    Arrow footer does not read, or holds another number of rows). Costs a stat per shard.
    ``manifest``: the store's manifest when the caller has read it already."""
    path = Path(path)
    if manifest is None:
        try:
            manifest = read_manifest(path / MANIFEST)
        except AscError as exc:
            return str(exc).split(": ", 1)[-1]  # what is wrong with it, without its path
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and "file" in s and "rows" in s for s in shards):
        return f"{MANIFEST} lists no shards"
    for shard in shards:
        file = path / shard["file"]
        try:
            size = file.stat().st_size
        except OSError:
            return f"{shard['file']} is missing"
        if "bytes" in shard:
            if size != shard["bytes"]:
                return f"{shard['file']} is {size} bytes, the manifest records {shard['bytes']}"
            continue
        try:
            rows = pa.ipc.open_file(pa.memory_map(str(file), "r")).get_batch(0).num_rows
        except (OSError, pa.ArrowInvalid) as exc:
            return f"{shard['file']} does not read as Arrow ({str(exc).splitlines()[0]})"
        if rows != shard["rows"]:
            return f"{shard['file']} holds {rows} rows, the manifest records {shard['rows']}"
    return None


def _intact(path: Path) -> bool:
    return (path / MANIFEST).is_file() and store_damage(path) is None


def _discard(path: Path, staging: Path) -> None:
    """Take a damaged store out of view at once (a rename), then delete it."""
    aside = staging / f"{path.name}-damaged-{uuid.uuid4().hex[:8]}"  # swept with the stale ones if rmtree fails
    os.rename(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _build(dataset, todo, root, fingerprint, map_fn, shard_size, progress) -> list[str]:
    configs = [c for c, _ in todo]
    first = dataset.path(dataset.clips[0])
    info = audio_info(first)  # the header only: a frame longer than the clips is refused before any work
    for config in configs:
        config.check_clip_length(round(info.frames * config.sample_rate / info.sample_rate), str(first))
        config.check_mel_bands()
    staging = [root / ".staging" / f"{name}-{uuid.uuid4().hex[:8]}" for _, name in todo]
    try:
        for folder in staging:
            folder.mkdir()
        corrections = {}
        corrected = [c for c in configs if c.spectrum_correction]
        if corrected:
            if len({c.n_fft for c in corrected}) > 1:
                raise AscError("spectrum correction works on one STFT size per build: "
                               f"n_fft {sorted({c.n_fft for c in corrected})} asked together")
            corrections = spectrum_corrections(dataset, corrected[0], map_fn, shard_size)
        tasks = [
            ShardTask(i, str(dataset.root), clips, tuple(configs), tuple(map(str, staging)), corrections)
            for i, clips in enumerate(shard_clips(dataset.clips, shard_size))
        ]
        results = map_fn(run_shard, tasks, (lambda r: progress(r["clips"])) if progress else None)
        _check_one_shape(tasks, results, len(configs))
        published = []
        for j, ((config, name), folder) in enumerate(zip(todo, staging)):
            if config.spectrum_correction:
                np.save(folder / "_correction.npy", np.stack([corrections.get(d, np.ones(config.n_fft // 2 + 1, np.float32))
                                                             for d in dataset.devices]))
            manifest = _manifest(dataset, config, name, fingerprint, tasks, [r["stats"][j] for r in results],
                                 sum(r["seconds"] for r in results), folder)
            if config.spectrum_correction:
                manifest["correction"] = CORRECTION_RECIPE
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
            try:
                os.rename(folder, root / name)  # atomic on one filesystem: all of the store or none
            except OSError:
                if not (root / name / MANIFEST).is_file():
                    raise
                shutil.rmtree(folder, ignore_errors=True)  # someone else published it: theirs stands
            published.append(str(root / name))
        return published
    except BaseException:
        for folder in staging:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _mean_std(total: np.ndarray, squares: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std from sums over ``frames`` frames (the manifest's and a subset's statistics)."""
    mean = total / max(frames, 1)
    return mean, np.sqrt(np.maximum(squares / max(frames, 1) - mean**2, 0))


def _length_error(where: str, frames: int, first: str, first_frames: int) -> AscError:
    return AscError(f"{where} gives {frames} frames, but {first} gives {first_frames}: a store's clips must have one length")


def _check_one_shape(tasks, results, n_configs) -> None:
    """Every shard's arrays must share one shape: a reader stacks rows across shards."""
    for j in range(n_configs):
        first = results[0]["stats"][j][3]
        for task, result in zip(tasks, results):
            shape = result["stats"][j][3]
            if shape != first:
                raise _length_error(f"{task.data_root}/{task.clips[0].filename}:", shape[-1],
                                    tasks[0].clips[0].filename, first[-1])


def spectrum_corrections(dataset: Dataset, config: FeatureConfig, map_fn=serial_map, shard_size: int = 64) -> dict:
    """Per-device correction coefficients from the training split's parallel pairs, less those of the
    locations the validation protocol holds out (:data:`CORRECTION_RECIPE`)."""
    held = validation_locations(dataset.clips, CORRECTION_RECIPE["validation_share"], CORRECTION_RECIPE["validation_seed"])
    pairs = [(members[REFERENCE_DEVICE], clip)
             for members in dataset.parallel_groups("train").values()
             if (members[REFERENCE_DEVICE].scene, members[REFERENCE_DEVICE].identifier) not in held
             for device, clip in sorted(members.items()) if device != REFERENCE_DEVICE]
    if not pairs:
        raise AscError(f"{dataset.root}: spectrum correction needs parallel A / device pairs in the training split "
                       "outside the locations held out for validation; found none")
    chunks = [pairs[i:i + shard_size] for i in range(0, len(pairs), shard_size)]
    spectra = [row for chunk in map_fn(_PairSpectra(str(dataset.root), config), chunks) for row in chunk]
    by_device: dict[str, list] = {}
    for device, ref, dev in spectra:
        by_device.setdefault(device, []).append((ref, dev))
    return correction_coefficients(by_device)


@dataclass(frozen=True)
class _PairSpectra:
    """Picklable callable for map_fn: the mean spectra of one chunk of pairs."""

    data_root: str
    config: FeatureConfig

    def __call__(self, pairs):
        return run_pair_spectra(self.data_root, pairs, self.config)


def _manifest(dataset, config, name, fingerprint, tasks, stats, seconds, folder) -> dict:
    total, squares, frames = (sum(s[k] for s in stats) for k in range(3))
    shape = stats[0][3]
    counts: dict[str, dict[str, int]] = {}
    for clip in dataset.clips:
        counts.setdefault(clip.split, {}).setdefault(clip.device or "?", 0)
        counts[clip.split][clip.device or "?"] += 1
    mean, std = _mean_std(total, squares, frames)
    return {
        "format": FORMAT_VERSION,
        "name": name,
        "config": config.to_dict(),
        "dataset": {"root": str(Path(dataset.root).resolve()), "fingerprint": fingerprint, "labeled": dataset.labeled,
                    "devices": dataset.devices, "scenes": dataset.scenes},
        "clips": len(dataset),
        "counts": counts,
        "shape": list(shape),
        "dtype": config.dtype,
        # sizes let `prepare` and every reader notice a shard truncated or replaced after publishing
        "shards": [{"file": t.file_name, "rows": len(t.clips), "bytes": (Path(folder) / t.file_name).stat().st_size}
                   for t in tasks],
        # GMS / GMSVN statistics over every frame of every training clip, per Mel band.
        "train_mean": mean.tolist() if frames else None,
        "train_std": std.tolist() if frames else None,
        "train_frames": int(frames),
        "extraction_seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------
_MANIFEST_KEYS = {"name": str, "config": dict, "dataset": dict, "counts": dict, "shape": list, "shards": list}
_KINDS = {str: "a string", dict: "an object", list: "a list"}


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise AscError(f"{path}: corrupt manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise AscError(f"{path}: corrupt manifest (not a JSON object)")
    if manifest.get("format") == FORMAT_VERSION:  # another format is the reader's to name, not corruption
        # the parts every reader indexes without a check of its own (a derived cache's manifest is the
        # store's, with its own shards: the same keys)
        for key, kind in _MANIFEST_KEYS.items():
            if not isinstance(manifest.get(key), kind):
                raise AscError(f"{path}: corrupt manifest ({key}: {_KINDS[kind]} expected, not "
                               f"{json.dumps(manifest.get(key))[:60]})")
        shape = manifest["shape"]
        if len(shape) != 2 or not all(isinstance(n, int) and n > 0 for n in shape):
            raise AscError(f"{path}: corrupt manifest (shape: [n_mels, frames] expected, not {json.dumps(shape)[:60]})")
    return manifest


def read_table_file(path: Path) -> tuple[list[Clip], np.ndarray]:
    """Memory-map one shard: its clips and a zero-copy ``[rows, n_mels, frames]`` view of its features."""
    try:
        batch = pa.ipc.open_file(pa.memory_map(str(path), "r")).get_batch(0)
    except (OSError, pa.ArrowInvalid) as exc:
        raise AscError(f"{path}: not a readable Arrow feature file ({exc})") from None
    meta = {name: batch.column(name).to_pylist() for name in META_COLUMNS}
    clips = [Clip(filename=f, split=s, scene=sc, city=ci, location=lo, segment=se, device=d and d.lower())
             for f, s, sc, ci, lo, se, d in zip(meta["filename"], meta["split"], meta["scene"], meta["city"],
                                               meta["location"], meta["segment"], meta["device"])]
    return clips, batch.column("logmel").to_numpy_ndarray()


class FeatureStore:
    """A published store, memory-mapped: clips, features by index, training statistics.

    Nothing is read into memory until a batch is gathered; the pages of the files are shared by
    every process on a node that opens the same store.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise AscError(f"{self.path}: not a feature store (no {MANIFEST}; run `python -m search prepare`)")
        self.manifest = read_manifest(manifest_path)
        if self.manifest.get("format") != FORMAT_VERSION:
            raise AscError(f"{manifest_path}: store format {self.manifest.get('format')}, this code reads {FORMAT_VERSION}")
        dataset = self.manifest.get("dataset") or {}
        if isinstance(dataset.get("devices"), list):  # written from a set with capital device letters
            dataset["devices"] = list(dict.fromkeys(str(d).lower() for d in dataset["devices"]))
        damage = store_damage(self.path, self.manifest)
        if damage is not None:
            raise AscError(f"{self.path}: damaged store: {damage} (run `python -m search prepare` again to rebuild it)")
        try:
            self.config = FeatureConfig(**self.manifest["config"])
        except (KeyError, TypeError) as exc:
            raise AscError(f"{manifest_path}: corrupt manifest (feature configuration: {exc})") from None
        self.clips: list[Clip] = []
        self._parts: list[np.ndarray] = []
        shard_of, row_of = [], []
        for k, shard in enumerate(self.manifest["shards"]):
            clips, features = read_table_file(self.path / shard["file"])
            self.clips += clips
            self._parts.append(features)
            shard_of += [k] * len(clips)
            row_of += range(len(clips))
        self._shard_of, self._row_of = np.array(shard_of), np.array(row_of)
        self._index = {c.filename: i for i, c in enumerate(self.clips)}

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.manifest["shape"])

    @property
    def train_mean(self) -> np.ndarray:
        return np.asarray(self.manifest["train_mean"], dtype=np.float32)

    @property
    def train_std(self) -> np.ndarray:
        return np.asarray(self.manifest["train_std"], dtype=np.float32)

    def index_of(self, filename: str) -> int:
        return self._index[filename]

    def select(self, split: str | None = None, devices: Iterable[str] | None = None) -> np.ndarray:
        """Indices of the clips of ``split`` (and of ``devices``), in store order."""
        devices = set(devices) if devices is not None else None
        return np.array([i for i, c in enumerate(self.clips)
                         if (split is None or c.split == split) and (devices is None or c.device in devices)], dtype=np.int64)

    def features(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``[len(indices), n_mels, frames]`` features (a copy of just these rows)."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(self._parts) == 1:
            return self._parts[0][indices]
        out = np.empty((len(indices), *self.shape), dtype=self._parts[0].dtype)
        # One copy per row straight from the mapped file into the batch (a row is ~220 kB at
        # 128 x 430, so the loop's overhead is small beside the copy).
        for j, (k, r) in enumerate(zip(self._shard_of[indices].tolist(), self._row_of[indices].tolist())):
            out[j] = self._parts[k][r]
        return out

    def band_statistics(self, indices: Sequence[int] | np.ndarray, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Per-band mean and std over every frame of the clips ``indices`` (the manifest's
        ``train_mean`` / ``train_std`` are these over the training split)."""
        indices = np.sort(np.asarray(indices, dtype=np.int64))
        if len(indices) == 0:
            raise AscError(f"{self.path}: band statistics of no clips")
        total = np.zeros(self.shape[0]); squares = np.zeros(self.shape[0])
        for start in range(0, len(indices), chunk):
            x = self.features(indices[start:start + chunk]).astype(np.float64)
            total += x.sum(axis=(0, 2))
            squares += (x**2).sum(axis=(0, 2))
        mean, std = _mean_std(total, squares, len(indices) * self.shape[1])
        return mean.astype(np.float32), std.astype(np.float32)

    def parts(self) -> list[np.ndarray]:
        """The memory-mapped shard arrays themselves (zero-copy views)."""
        return list(self._parts)

    def derived(self, name: str, transform: Callable[[np.ndarray], np.ndarray], map_fn: Callable = serial_map) -> "FeatureStore":
        """This store with ``transform`` applied to every shard, cached under ``_derived/<name>``.

        Built once (file-locked, written aside and renamed into place) by the first caller; every
        later caller, in any process, memory-maps the cached files. ``transform`` maps a batch
        ``[rows, n_mels, frames]`` to one of the same shape and must be picklable for ``map_fn``.
        """
        target = self.path / "_derived" / name
        if _intact(target):  # the usual case, and the only one a read-only store allows
            return FeatureStore(target)
        folder = self.path / "_derived"
        try:
            folder.mkdir(exist_ok=True)
            lock = FileLock(str(folder / f".{name}.lock"))
            lock.acquire()
        except OSError as exc:
            raise AscError(f"{self.path}: cannot write the {name} cache beside this store ({exc.strerror or exc}); "
                           "build it once where the store is writable (any run with this enhancement does)") from None
        try:
            if not _intact(target):
                if target.exists():  # damaged (e.g. a truncated shard): rebuilt under the same name
                    _discard(target, folder)
                staging = folder / f".{name}-{uuid.uuid4().hex[:8]}"
                staging.mkdir()
                try:
                    shards = self.manifest["shards"]
                    map_fn(_run_derive, [_DeriveShard(str(self.path / s["file"]), str(staging / s["file"]), transform)
                                         for s in shards])
                    shards = [{**s, "bytes": (staging / s["file"]).stat().st_size} for s in shards]
                    (staging / MANIFEST).write_text(json.dumps({**self.manifest, "shards": shards, "derived": name},
                                                               indent=1))
                    os.rename(staging, target)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
        finally:
            lock.release()
        return FeatureStore(target)


@dataclass(frozen=True)
class _DeriveShard:
    source: str
    target: str
    transform: Callable


def _run_derive(job: _DeriveShard) -> int:
    clips, features = read_table_file(Path(job.source))
    write_table_file(job.target, clips, np.asarray(job.transform(features), dtype=features.dtype))
    return len(clips)


def current_stores(store_root: str | Path) -> list[tuple[Path, dict]]:
    """The published stores under a root with their manifests, one per feature configuration and dataset.

    When the audio changes, ``prepare`` publishes a new store beside the old one (a search may still
    be reading it); the old one is superseded, not an alternative to choose from. Where several
    stores share a configuration and a dataset, the current one is the store whose fingerprint
    matches the audio as it is now (when the dataset can be read from here), else the newest.
    """
    root = Path(store_root)
    groups: dict[str, list[tuple[int, Path, dict]]] = {}
    for path in sorted(root.glob("logmel*")) if root.is_dir() else []:
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            continue
        manifest = read_manifest(manifest_path)
        if (manifest.get("config") or {}).get("spectrum_correction") and manifest.get("correction") != CORRECTION_RECIPE:
            continue  # fitted by an older rule (on the validation locations too): prepare makes its successor
        key = json.dumps([manifest.get("config"), manifest.get("dataset", {}).get("root")], sort_keys=True)
        groups.setdefault(key, []).append((manifest_path.stat().st_mtime_ns, path, manifest))
    current = []
    for members in groups.values():
        members.sort(key=lambda m: m[0])
        chosen = members[-1]
        if len(members) > 1:
            fingerprint = _fingerprint_now(members[-1][2].get("dataset", {}).get("root"))
            chosen = next((m for m in reversed(members) if m[2]["dataset"].get("fingerprint") == fingerprint), chosen)
        current.append(chosen[1:])
    return sorted(current, key=lambda pair: pair[0].name)


def _fingerprint_now(data_root: str | None) -> str | None:
    """The fingerprint of the dataset at ``data_root`` as it is now; None when it cannot be read here."""
    if not data_root or not Path(data_root).is_dir():
        return None
    try:
        return dataset_fingerprint(read_dataset(data_root))
    except AscError:
        return None


def find_store(store_root: str | Path, config: FeatureConfig, dataset: Dataset) -> FeatureStore:
    """The published store of ``config`` for the current state of ``dataset`` (an AscError if absent)."""
    name = store_name(config, dataset_fingerprint(dataset))
    path = Path(store_root) / name
    if not (path / MANIFEST).is_file():
        raise AscError(f"{path}: no store for n_mels={config.n_mels} on the current {dataset.root} "
                       "(run `python -m search prepare` first; changed audio needs a new one)")
    return FeatureStore(path)
