"""Shared fixtures and markers. The fresh-virtual-environment test runs only with ``--runvenv``."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_addoption(parser):
    parser.addoption("--runvenv", action="store_true",
                     help="also run tests marked venv (a fresh virtual environment from a model's requirements)")


def pytest_configure(config):
    config.addinivalue_line("markers", "venv: builds a virtual environment (minutes, GBs); run with --runvenv")


# The modules that take longest on 2 cores, longest first (the rest keep their order after them):
# with `-n 2 --dist loadfile --no-loadscope-reorder` (the README's test command) a worker takes a
# whole module at a time in this order, so that neither is left with a long module at the end.
LONGEST_FIRST = ("test_faults.py", "test_search.py", "test_fuse.py", "test_stops.py", "test_store.py",
                 "test_demo.py", "test_seeds.py", "test_bench_devices.py", "test_train.py", "test_bench_fusion.py")


def _module_rank(item) -> int:
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_module_rank)  # stable: each module's own order is kept
    skip_venv = pytest.mark.skip(reason="builds a virtual environment: run with --runvenv (.ci/run does)")
    for item in items:
        if "venv" in item.keywords and not config.getoption("--runvenv"):
            item.add_marker(skip_venv)


# A small synthetic development set shared by the feature, store and training tests: 1 s clips at
# 22.05 kHz, 4 A segments per scene (3 train, 1 evaluate; one parallel A/B/C group in each): 80 clips.
# Without the unseen devices (tests/test_enhance.py makes a set with them).
SMALL_SYNTH = dict(segments_per_scene=4, parallel_per_scene=2, seconds=1.0, sample_rate=22050, seed=3, unseen=())


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory):
    """Path of the shared small synthetic set (read-only: copy it before changing anything)."""
    from asc.synth import SynthConfig, write_dataset

    out = tmp_path_factory.mktemp("data") / "small"
    write_dataset(out, SynthConfig(**SMALL_SYNTH), workers=1)
    return out


@pytest.fixture(scope="session")
def fast_config():
    """Feature settings scaled to the small set (the paper's are for 10 s at 44.1 kHz)."""
    from asc.features import FeatureConfig

    return FeatureConfig(sample_rate=22050, n_fft=1024, hop_length=256, n_mels=32, fmax=11025.0)


# Module-scoped: each module that uses them builds its own (test_cli.py and test_store.py define a
# `store` of their own, which takes the place of this one there).
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A feature store of a small synthetic set with enough training locations to hold some out: what the
    searches of the tests read."""
    from asc.dataset import read_development
    from asc.features import FeatureConfig
    from asc.store import build_stores
    from asc.synth import SynthConfig, write_dataset

    root = tmp_path_factory.mktemp("search")
    write_dataset(root / "data", SynthConfig(**{**SMALL_SYNTH, "segments_per_scene": 6}), workers=1)
    config = FeatureConfig(sample_rate=22050, n_fft=1024, hop_length=256, n_mels=32, fmax=11025.0)
    build_stores(read_development(root / "data"), [config], root / "store")
    return root / "store"


@pytest.fixture(scope="module")
def small_store(synth_set, fast_config, tmp_path_factory):
    """The store of the shared small set (``synth_set``), in the fast feature settings."""
    from asc.dataset import read_development
    from asc.store import build_stores

    return build_stores(read_development(synth_set), [fast_config], tmp_path_factory.mktemp("store")).built[0]


def predictions_artifact(client, run_id: str):
    """A run's ``predictions.parquet`` as an Arrow table, downloaded into a folder removed afterwards
    (MLflow's download without a destination leaves a temporary folder per call)."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        return pq.read_table(client.download_artifacts(run_id, "predictions.parquet", tmp))
