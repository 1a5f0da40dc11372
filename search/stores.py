"""The feature stores a search reads: found (or prepared) before it starts, checked before it resumes.

A space's trials can ask for several feature configurations (n_mels, spectrum correction): the
driver resolves each to one store folder under ``--store`` before any trial runs
(:func:`resolve_stores`), refuses a space whose objective the selection clips cannot measure, and
names the ``prepare`` command that makes a missing store. A resumed search refuses stores that changed
since its first trials read them (:func:`check_stores_unchanged`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from asc import REFERENCE_DEVICE
from asc.dataset import read_dataset
from asc.errors import AscError
from asc.features import FeatureConfig
from asc.store import MANIFEST, FeatureStore, current_stores, dataset_fingerprint, read_manifest, store_damage, \
    store_name
from asc.train import split_indices
from search.prepare import format_report, prepare
from search.objectives import POOLED, check_pooled_devices
from search.space import PARAMS, Space


def resolve_stores(space: Space, store_root: str, data: str | None = None, address: str | None = None,
                   before_build: Callable[[dict[str, str]], None] | None = None) -> dict[str, str]:
    """feature-config key -> store folder, for every store a trial of ``space`` can ask for.

    With ``data`` the stores are prepared first (over the Ray cluster at ``address``), after
    ``before_build`` has seen the names they will have (feature-config key -> store name: a check that
    refuses builds nothing); without it a missing one is an error naming the ``prepare`` command that
    makes it.
    """
    configs = space.feature_configs()
    if str(store_root).startswith(("s3://", "gs://")):
        raise AscError(f"--store {store_root}: a file system folder (local or NFS), not an object store")
    if data is not None:
        # what the clips allow is checked on the dataset's own list first: a refusal builds no store
        dataset = read_dataset(data)
        _check_selection_devices(space, list(dataset.clips), str(data))
        if before_build is not None:
            fingerprint = dataset_fingerprint(dataset)
            before_build({config.key(): store_name(config, fingerprint) for config in configs})
        print(f"preparing the {len(configs)} feature store(s) the space needs from {data}")
        print(format_report(prepare(dataset, store_root, configs, address=address)))
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
    first = next(iter(stores.values()))
    _check_selection_devices(space, FeatureStore(first).clips, first)
    return stores


def _selections(space: Space) -> set:
    """Every metric a trial of the space can choose its epoch by (``params.selection``)."""
    default = space.fixed.get("selection", PARAMS["selection"].default)
    if space.points:
        return {p.get("selection", default) for _, p in space.points}
    return set(space.searched["selection"].values) if "selection" in space.searched else {default}


def _check_selection_devices(space: Space, clips: list, store: str) -> None:
    """An objective on B&C needs B or C clips among the clips each protocol selects on; without
    them every trial's objective is NaN (ASHA cannot stop such trials, Optuna records them FAIL).
    A trial choosing its epoch by Metric B needs each of them too. ``clips``: a store's (or the
    dataset's it is built from), ``store`` where they are, for the message."""
    by_metric_b, pooled = "metric_b" in _selections(space), space.objective.name in POOLED
    if not (by_metric_b or pooled or space.objective.name == "acc_unseen"):
        return
    protocol = space.protocol
    _, select, _ = split_indices(clips, space.train_config({**space.fixed, "protocol": protocol}, store))
    devices = sorted({clips[i].device for i in select})
    seen = {c.device for c in clips if c.split == "train"}
    if by_metric_b:
        check_pooled_devices("metric_b", devices, seen, f"{space.path}: params.selection", instead="select by metric_a")
        if REFERENCE_DEVICE not in devices or not set(devices) - {REFERENCE_DEVICE}:
            raise AscError(f"{space.path}: params.selection: metric_b needs clips of device "
                           f"{REFERENCE_DEVICE.upper()} and of another among the selection clips, but the {protocol} "
                           f"protocol selects on {len(select)} clips of device "
                           f"{', '.join(d.upper() for d in devices)} only ({store}); select by metric_a")
    if space.objective.name == "acc_unseen" and not set(devices) - seen:
        raise AscError(f"{space.path}: objective: acc_unseen needs clips of devices unseen in training among the "
                       f"selection clips, but the {protocol} protocol selects on devices "
                       f"{', '.join(d.upper() for d in devices)} only, all seen in "
                       f"training ({store}); the evaluation split holds them: protocol paper")
    if not pooled:
        return
    check_pooled_devices(space.objective.name, devices, seen, f"{space.path}: objective")
    both = space.objective.name != "acc_bc"  # Metric B and what is built on it need A clips too
    if not set(devices) - {REFERENCE_DEVICE} or (both and REFERENCE_DEVICE not in devices):
        raise AscError(f"{space.path}: objective: {space.objective.name} needs clips of devices other than "
                       f"{REFERENCE_DEVICE.upper()}{' and of ' + REFERENCE_DEVICE.upper() if both else ''} among the "
                       f"selection clips, but the {protocol} protocol selects "
                       f"on {len(select)} clips of device {', '.join(d.upper() for d in devices)} only ({store})")


def prepare_command(configs: list, store_root) -> str:
    """The `prepare` command line that makes the stores of ``configs`` (which differ only in n_mels)."""
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


def store_identity(path: str) -> str:
    """The name a store's manifest gives it: a hash of its feature configuration and of the audio it
    was extracted from (``asc.store.store_name``), the same after a rebuild of the same audio."""
    return read_manifest(Path(path) / MANIFEST)["name"]


def check_stores_unchanged(info: dict, info_file: Path) -> None:
    """Refuse to resume a search whose trials would read other features than its earlier trials did:
    a store folder gone, damaged, or holding another store (other audio or settings) since it started.
    ``info``: the search's settings as ``info_file`` (its ``search.json``) holds them."""
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
                           f"its remaining trials on other features than the finished ones ({info_file}). "
                           "Restore the store (`python -m search prepare` on the same audio rebuilds it), or start "
                           "a new search")


def store_devices(stores: dict) -> list[str]:
    """The devices of the dataset the stores (feature-config key -> folder) were extracted from."""
    return list(read_manifest(Path(next(iter(stores.values()))) / MANIFEST)["dataset"]["devices"])


def cache_line(stores: dict) -> str | None:
    """One line on the disk the trials' caches take beside the stores (the median filter's on CPU
    nodes: a store-sized copy per setting trained), or None where there are none (or they are on
    another machine's disk)."""
    count, size, folders = 0, 0, []
    for path in dict.fromkeys(stores.values()):
        folder = Path(path) / "_derived"
        caches = [c for c in folder.glob("*") if c.is_dir() and not c.name.startswith(".")] if folder.is_dir() else []
        if caches:
            count += len(caches)
            size += sum(f.stat().st_size for c in caches for f in c.rglob("*") if f.is_file())
            folders.append(str(folder))
    if not count:
        return None
    return (f"caches: {count} median-filter cache(s), {size / 1e9:.2f} GB in {', '.join(folders)}; a trial that "
            "needs one rebuilds it, so they may be deleted while no search reads the store")


def training_devices(stores: dict | str | Path) -> list[str]:
    """The devices of the training split of a store (its folder) or of a search's stores (feature-config
    key -> folder; one dataset): what the models heard, the others being unseen."""
    folder = next(iter(stores.values())) if isinstance(stores, dict) else stores
    return sorted(read_manifest(Path(folder) / MANIFEST)["counts"].get("train", {}))


def has_unseen_devices(stores: dict) -> bool:
    """Whether the dataset of the stores has devices that its training split never hears (the
    synthetic set's s1 and s2, DCASE 2020's s4-s6; none in 2019)."""
    return bool(set(store_devices(stores)) - set(training_devices(stores)))
