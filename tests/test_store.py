"""The Arrow feature store: content, memory-mapping, statistics, publishing, rebuilds and failures."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset
import pytest

from asc import AscError
from asc.dataset import read_development
from asc.enhance import CachedMedianFilter, Enhancement
from asc.features import load_audio, log_mel
from asc.store import MANIFEST, FeatureStore, build_stores, dataset_fingerprint, find_store, store_name

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(synth_set, fast_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    report = build_stores(read_development(synth_set), [fast_config], root, shard_size=16)
    assert len(report.built) == 1
    return FeatureStore(report.built[0])


@pytest.fixture
def data_copy(synth_set, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(synth_set, out)
    return out


def _published(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file()) if root.exists() else []


def test_rows_columns_and_values(store, synth_set, fast_config):
    dataset = read_development(synth_set)
    assert len(store) == len(dataset) == 80
    assert [c.filename for c in store.clips] == [c.filename for c in dataset.clips]
    assert store.clips == list(dataset.clips)  # metadata columns round-trip exactly
    i = store.index_of("audio/" + Path(dataset.clips[7].filename).name)
    expected = log_mel(load_audio(synth_set / dataset.clips[7].filename, 22050), fast_config)
    np.testing.assert_array_equal(store.features([i])[0], expected)
    assert store.shape == expected.shape == (32, 86)


def test_plain_pyarrow_reads_the_store(store):
    table = pyarrow.dataset.dataset(store.path, format="arrow").to_table()
    assert table.num_rows == 80
    assert {"filename", "scene", "city", "location", "segment", "device", "split", "group", "logmel"} <= set(table.column_names)
    assert isinstance(table.schema.field("logmel").type, pa.FixedShapeTensorType)
    assert table.schema.field("logmel").type.shape == [32, 86]


def test_trials_memory_map_without_copying(store):
    for part in store.parts():
        assert not part.flags.owndata and not part.flags.writeable  # a view of the mapped file
    again = FeatureStore(store.path)
    np.testing.assert_array_equal(again.features(np.arange(5)), store.features(np.arange(5)))


def test_manifest(store, synth_set, fast_config):
    m = store.manifest
    assert m["config"] == fast_config.to_dict()
    assert m["dataset"]["fingerprint"] == dataset_fingerprint(read_development(synth_set))
    assert m["counts"] == {"train": {"a": 30, "b": 10, "c": 10}, "evaluate": {"a": 10, "b": 10, "c": 10}}
    assert m["shape"] == [32, 86] and m["dtype"] == "float32"
    assert sum(s["rows"] for s in m["shards"]) == 80


def test_statistics_come_from_the_training_split_only(store):
    train = store.features(store.select("train")).astype(np.float64)
    np.testing.assert_allclose(store.train_mean, train.mean(axis=(0, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(store.train_std, train.std(axis=(0, 2)), rtol=1e-4, atol=1e-4)
    everything = store.features(np.arange(len(store))).astype(np.float64)
    assert not np.allclose(store.train_mean, everything.mean(axis=(0, 2)), atol=1e-3)


def test_select_and_gather_across_shards(store):
    bc = store.select("evaluate", devices=["b", "c"])
    assert len(bc) == 20 and all(store.clips[i].device in "bc" for i in bc)
    idx = np.array([79, 0, 33, 17, 16])  # across shards of 16, out of order
    np.testing.assert_array_equal(store.features(idx), np.stack([store.features([i])[0] for i in idx]))


def test_rerun_is_a_no_op_and_changes_rebuild(data_copy, fast_config, tmp_path):
    root = tmp_path / "store"
    first = build_stores(read_development(data_copy), [fast_config], root)
    again = build_stores(read_development(data_copy), [fast_config], root)
    assert again.built == [] and again.up_to_date == first.built
    # changed audio: a new fingerprint, a new store
    wav = next((data_copy / "audio").glob("*-a.wav"))
    os.utime(wav, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = build_stores(read_development(data_copy), [fast_config], root)
    assert len(changed.built) == 1 and changed.built != first.built
    # removed audio (and its rows): rebuilt again, with one clip fewer
    meta = (data_copy / "meta.csv").read_text().splitlines()
    victim = meta[-1].split("\t")[0]
    (data_copy / "meta.csv").write_text("\n".join(meta[:-1]) + "\n")
    for fold in ("fold1_train.csv", "fold1_evaluate.csv", "fold1_test.csv"):
        path = data_copy / "evaluation_setup" / fold
        path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if not line.startswith(victim)))
    (data_copy / victim).unlink()
    removed = build_stores(read_development(data_copy), [fast_config], root)
    assert len(FeatureStore(removed.built[0])) == 79


def test_failed_build_leaves_no_store_and_earlier_stores_untouched(data_copy, fast_config, tmp_path):
    root = tmp_path / "store"
    good = build_stores(read_development(data_copy), [fast_config], root).built[0]
    before = {p.name: p.stat().st_mtime_ns for p in Path(good).iterdir()}
    bad = data_copy / read_development(data_copy).clips[50].filename
    bad.write_bytes(b"RIFF....WAVEgarbage")
    other = fast_config.__class__(**{**fast_config.to_dict(), "n_mels": 40})
    with pytest.raises(AscError, match=bad.name):
        build_stores(read_development(data_copy), [other], root, shard_size=8)
    assert _published(root) == [Path(good).name]
    assert list((root / ".staging").iterdir()) == []
    assert {p.name: p.stat().st_mtime_ns for p in Path(good).iterdir()} == before
    FeatureStore(good).features([0])


def test_wrong_sample_rate_names_the_file(data_copy, fast_config, tmp_path):
    import soundfile

    clip = read_development(data_copy).clips[3].filename
    y, _ = soundfile.read(data_copy / clip)
    soundfile.write(data_copy / clip, y, 16000, subtype="PCM_24")
    with pytest.raises(AscError, match=f"{Path(clip).name}: sample rate 16000 Hz, expected 22050"):
        build_stores(read_development(data_copy), [fast_config], tmp_path / "store")
    assert _published(tmp_path / "store") == []


def test_clips_of_another_length_in_another_shard_name_the_clip(data_copy, fast_config, tmp_path):
    import soundfile

    clip = read_development(data_copy).clips[50].filename
    y, rate = soundfile.read(data_copy / clip)
    soundfile.write(data_copy / clip, y[: len(y) // 2], rate, subtype="PCM_24")
    with pytest.raises(AscError, match=f"{Path(clip).name}: gives 43 frames.*one length"):
        build_stores(read_development(data_copy), [fast_config], tmp_path / "store", shard_size=1)
    assert _published(tmp_path / "store") == []


def test_interrupted_build_is_invisible(synth_set, fast_config, tmp_path):
    calls = []

    def dying_map(fn, items, on_result=None):
        out = []
        for item in items:
            if len(calls) == 2:
                raise KeyboardInterrupt  # as a Ctrl-C in the middle of the shards
            calls.append(item)
            out.append(fn(item))
        return out

    with pytest.raises(KeyboardInterrupt):
        build_stores(read_development(synth_set), [fast_config], tmp_path / "store", map_fn=dying_map, shard_size=8)
    assert not (tmp_path / "store").exists()  # the root it made, taken back with nothing published


BUILD = """
import sys, time
from asc.dataset import read_development
from asc.features import FeatureConfig
from asc.store import build_stores
# argv: DATA STORE [seconds to pause after each shard] [Mel-band counts, comma-separated]
pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
mels = [int(n) for n in sys.argv[4].split(",")] if len(sys.argv) > 4 else [32]
configs = [FeatureConfig(sample_rate=22050, n_fft=1024, hop_length=256, n_mels=n, fmax=11025.0) for n in mels]
r = build_stores(read_development(sys.argv[1]), configs, sys.argv[2], shard_size=4,
                 progress=lambda n: (print("shard", flush=True), time.sleep(pause)))
print("built" if r.built else "up to date", flush=True)
"""


def test_killed_build_is_invisible_and_the_next_one_cleans_up(synth_set, tmp_path):
    root = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(synth_set), str(root), "60"], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "shard"  # one shard written, the build paused in the middle
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _published(root) == []
    assert list((root / ".staging").iterdir())  # the half-written store is there, but not visible
    run = subprocess.run([sys.executable, "-c", BUILD, str(synth_set), str(root)], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip().endswith("built"), run.stderr
    assert len(_published(root)) == 1 and list((root / ".staging").iterdir()) == []


@pytest.mark.parametrize("orders", [("32", "32"), ("32,40", "40,32")], ids=["same", "reversed"])
def test_concurrent_builds_end_with_one_good_store(synth_set, tmp_path, orders):
    """Two builds of the same stores at once, listing the configurations in the same or in opposite
    orders (which would deadlock if locks were taken in the order given)."""
    root = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(synth_set), str(root), "0", mels], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for mels in orders]
    try:
        outputs = [p.communicate(timeout=120) for p in procs]  # a deadlock would wait here for ever
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outputs]
    last_lines = sorted(o[0].strip().splitlines()[-1] for o in outputs)
    assert last_lines == ["built", "up to date"]
    assert len(_published(root)) == len(orders[0].split(","))
    for name in _published(root):
        assert len(FeatureStore(root / name)) == 80


def test_median_filter_cache_equals_on_the_fly_and_is_built_once(store):
    enhancement = Enhancement("gms", median_filter=(7, 21))
    transform = CachedMedianFilter(enhancement, tuple(store.train_mean), tuple(store.train_std))
    cached = store.derived(enhancement.cache_key, transform)
    idx = np.arange(0, 80, 7)
    expected = enhancement(store.features(idx), store.train_mean, store.train_std)
    np.testing.assert_allclose(cached.features(idx), expected, atol=1e-5)
    stamp = (cached.path / MANIFEST).stat().st_mtime_ns
    assert (store.derived(enhancement.cache_key, transform).path / MANIFEST).stat().st_mtime_ns == stamp
    assert [c.filename for c in cached.clips] == [c.filename for c in store.clips]


def test_find_store_and_missing_store(store, synth_set, fast_config, tmp_path):
    assert find_store(store.path.parent, fast_config, read_development(synth_set)).path == store.path
    with pytest.raises(AscError, match="prepare"):
        find_store(tmp_path, fast_config, read_development(synth_set))
    with pytest.raises(AscError, match="not a feature store"):
        FeatureStore(tmp_path)


def test_spectrum_correction_brings_device_spectra_onto_a(synth_set, fast_config, tmp_path):
    corrected_config = fast_config.__class__(**{**fast_config.to_dict(), "spectrum_correction": True})
    report = build_stores(read_development(synth_set), [fast_config, corrected_config], tmp_path)
    plain, corrected = (FeatureStore(p) for p in sorted(report.built, key=lambda p: "-sc" in p))
    assert "-sc" in corrected.path.name and (corrected.path / "_correction.npy").is_file()
    dataset = read_development(synth_set)
    for device in ("b", "c"):
        gaps = {}
        for name, s in (("plain", plain), ("corrected", corrected)):
            diffs = []
            for members in dataset.parallel_groups("evaluate").values():  # not the pairs it was fitted on
                a, d = (s.features([s.index_of(members[k].filename)])[0] for k in ("a", device))
                diffs.append(d.mean(axis=1) - a.mean(axis=1))  # per-band log-Mel offset of the device
            gaps[name] = np.abs(np.mean(diffs, axis=0))[2:-2].mean()  # skip the outermost bands
        # One correction per device, fitted on 4 pairs (the 10 training pairs less those of the
        # validation locations): it removes the device's average response but not each recording's
        # own (the synthetic devices vary per recording, and their dynamics and noise floor depend on
        # the level), so about a third of the offset is what it can take away here.
        assert gaps["corrected"] < 0.7 * gaps["plain"], gaps
    # A clips are untouched by the correction
    a = dataset.split("train")[0].filename
    np.testing.assert_array_equal(plain.features([plain.index_of(a)]), corrected.features([corrected.index_of(a)]))


def test_spectrum_correction_is_fitted_without_the_validation_locations(synth_set, fast_config, tmp_path):
    """The validation protocol selects on held-out training locations: the coefficients must not
    have seen them, and training under another validation split refuses the store."""
    from asc.dataset import validation_locations
    from asc.features import correction_coefficients, load_audio, mean_magnitude_spectrum
    from asc.models import ModelConfig
    from asc.train import TrainConfig, train

    corrected_config = fast_config.__class__(**{**fast_config.to_dict(), "spectrum_correction": True})
    dataset = read_development(synth_set)
    store = FeatureStore(build_stores(dataset, [corrected_config], tmp_path).built[0])
    held = validation_locations(dataset.clips)
    fitted = {"b": [], "c": []}
    for members in dataset.parallel_groups("train").values():
        if (members["a"].scene, members["a"].identifier) in held:
            continue
        spectrum = lambda c: mean_magnitude_spectrum(load_audio(dataset.path(c), 22050), corrected_config)  # noqa: E731
        for device in fitted:
            if device in members:
                fitted[device].append((spectrum(members["a"]), spectrum(members[device])))
    assert 0 < len(fitted["b"]) < len(dataset.parallel_groups("train"))
    expected = correction_coefficients(fitted)
    saved = np.load(store.path / "_correction.npy")
    for row, device in enumerate(store.manifest["dataset"]["devices"]):
        np.testing.assert_allclose(saved[row], expected[device] if device in expected else 1.0, rtol=1e-5)
    assert store.manifest["correction"]["validation_share"] == 0.2
    config = TrainConfig(store=str(store.path), model=ModelConfig(name="cnn"), epochs=1, batch_size=8,
                         protocol="validation", validation_seed=1)
    with pytest.raises(AscError, match="spectrum correction was fitted without the locations of validation_share 0.2, seed 0"):
        train(config)


def test_prepare_cli_with_ray(tmp_path):
    """The real path: `python -m search prepare` on a local Ray instance, twice."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "asc", "synth", str(data), "--segments-per-scene", "2",
                    "--parallel-per-scene", "1", "--seconds", "1"], cwd=REPO, check=True, capture_output=True)
    cmd = [sys.executable, "-m", "search", "prepare", str(data), "--store", str(tmp_path / "store"),
           "--n-mels", "64", "128", "--num-cpus", "2", "--shard-size", "8"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "extracted 60 clips" in first.stdout and first.stdout.count(" built") == 2  # 20 of them unseen devices
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 0 and "nothing to do" in second.stdout and second.stdout.count("up to date") == 3
    stores = sorted((tmp_path / "store").glob("logmel*"))
    assert [json.loads((p / MANIFEST).read_text())["shape"] for p in stores] == [[128, 43], [64, 43]]


def test_prepare_cli_bad_input_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "search", "prepare", str(tmp_path / "nope"), "--store", str(tmp_path / "s")],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("error:") and run.stderr.count("\n") == 1


def test_prepare_cli_bad_audio_through_ray_is_one_line(tmp_path):
    """A corrupt WAV fails its Ray task; the user sees one line naming it (no task tracebacks, no Ray
    start-up notices) and no store."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "asc", "synth", str(data), "--segments-per-scene", "2",
                    "--parallel-per-scene", "1", "--seconds", "1"], cwd=REPO, check=True, capture_output=True)
    bad = sorted((data / "audio").glob("*.wav"))[5]
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
    run = subprocess.run([sys.executable, "-m", "search", "prepare", str(data), "--store", str(tmp_path / "store"),
                          "--num-cpus", "2", "--shard-size", "4"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: ") and bad.name in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert _published(tmp_path / "store") == []


def test_prepare_cli_unreachable_cluster_is_one_line(synth_set, tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = subprocess.run([sys.executable, "-m", "search", "prepare", str(synth_set), "--store", str(tmp_path / "s"),
                          "--address", f"127.0.0.1:{port}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and f"127.0.0.1:{port}" in run.stderr and run.stderr.count("\n") == 1, run.stderr


def test_a_store_root_resolves_to_the_current_store_after_the_audio_changed(data_copy, fast_config, tmp_path):
    from asc.__main__ import resolve_store

    root = tmp_path / "store"
    old = build_stores(read_development(data_copy), [fast_config], root).built[0]
    wav = next((data_copy / "audio").glob("*-a.wav"))
    original = (wav.stat().st_atime_ns, wav.stat().st_mtime_ns)
    os.utime(wav, ns=(time.time_ns(), time.time_ns() + 10**9))
    new = build_stores(read_development(data_copy), [fast_config], root).built[0]
    assert resolve_store(str(root)) == new != old  # the old one is superseded, not a second choice
    os.utime(wav, ns=original)  # the audio as it was
    assert build_stores(read_development(data_copy), [fast_config], root).up_to_date == [old]
    assert resolve_store(str(root)) == old  # the store of the audio as it is, not the newest
    (Path(new) / MANIFEST).write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(AscError, match="corrupt manifest"):
        resolve_store(str(root))


def test_prepare_cli_takes_every_extraction_setting(synth_set, fast_config, tmp_path):
    run = subprocess.run([sys.executable, "-m", "search", "prepare", str(synth_set), "--store", str(tmp_path),
                          "--sample-rate", "22050", "--n-fft", "1024", "--hop-length", "256", "--n-mels", "32",
                          "--num-cpus", "2"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert _published(tmp_path) == [store_name(fast_config, dataset_fingerprint(read_development(synth_set)))]


@pytest.mark.parametrize("family, host", [("AF_INET", "127.0.0.1"), ("AF_INET6", "[::1]")])
def test_cluster_address_check_accepts_a_listening_head(family, host):
    import socket

    from search.prepare import _check_reachable

    try:
        server = socket.socket(getattr(socket, family))
        server.bind((host.strip("[]"), 0))
    except OSError:
        pytest.skip(f"no {family} loopback here")
    with server:
        server.listen()
        _check_reachable(f"{host}:{server.getsockname()[1]}")  # no error: somebody listens
    with pytest.raises(AscError, match="HOST:PORT"):
        _check_reachable("head-without-port")


# --------------------------------------------------------------------------------------------------
# Bad settings, bad audio and damage: refused before work, named, and nothing published.


def _copy_set(synth_set, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(synth_set, data)
    return data


def _nothing_published(root: Path) -> None:
    assert not list(root.glob("logmel*")), list(root.glob("logmel*"))
    assert not list((root / ".staging").iterdir()) if (root / ".staging").is_dir() else True


@pytest.mark.parametrize("change, message", [
    (dict(fmin=20000.0, fmax=10000.0), "fmin 20000 Hz must be below fmax 10000 Hz"),
    (dict(fmax=12000.0), "fmax 12000.0 Hz is above the Nyquist frequency"),
    (dict(sample_rate=0), "sample_rate must be at least 1"),
    (dict(hop_length=0), "hop_length must be at least 1"),
    (dict(n_mels=0), "n_mels must be at least 1"),
    (dict(power=0.0), "power must be positive"),
    (dict(fmin=float("nan")), "fmin must be a finite number"),
    (dict(fmin=-1.0), "fmin must be at least 0"),
    (dict(pad_mode="edge"), "pad_mode must be one of constant, reflect"),
    (dict(n_fft=256, n_mels=200), "n_mels 200 is more bands than n_fft 256 has frequency bins"),
])
def test_feature_settings_that_cannot_work_are_refused(fast_config, change, message):
    with pytest.raises(AscError, match=message.replace("(", r"\(")):
        fast_config.__class__(**{**fast_config.to_dict(), **change})


@pytest.mark.parametrize("field", ["n_fft", "hop_length"])
def test_frames_longer_than_the_clips_are_refused_before_work(synth_set, fast_config, tmp_path, field):
    config = fast_config.__class__(**{**fast_config.to_dict(), field: 32768})  # the clips hold 22050 samples
    with pytest.raises(AscError, match=rf"22050 samples \(1 s at 22050 Hz\), shorter than {field} 32768: a frame or hop"):
        build_stores(read_development(synth_set), [config], tmp_path)
    _nothing_published(tmp_path)


def test_mel_bands_without_a_frequency_bin_are_refused_before_work(synth_set, fast_config, tmp_path):
    config = fast_config.__class__(**{**fast_config.to_dict(), "n_fft": 256, "n_mels": 100})  # 129 bins
    with pytest.raises(AscError, match="n_mels 100: .* of the bands hold no frequency bin of n_fft 256"):
        build_stores(read_development(synth_set), [config], tmp_path)
    _nothing_published(tmp_path)


@pytest.mark.parametrize("damage, message", [
    (lambda y: np.where(np.arange(len(y)) == 100, np.nan, y), "audio holds 1 NaN or infinite samples"),
    (lambda y: y * 1e30, "its log-Mel features are not finite"),
])
def test_non_finite_audio_or_features_name_the_clip_and_publish_nothing(synth_set, fast_config, tmp_path,
                                                                      damage, message):
    import soundfile

    data = _copy_set(synth_set, tmp_path)
    dataset = read_development(data)
    victim = dataset.path(dataset.clips[3])
    y, rate = soundfile.read(victim, dtype="float32")
    soundfile.write(victim, damage(y).astype(np.float32), rate, subtype="FLOAT")
    with pytest.raises(AscError, match=f"{victim}: {message}"):
        build_stores(read_development(data), [fast_config], tmp_path / "store", shard_size=8)
    _nothing_published(tmp_path / "store")


def test_a_truncated_shard_is_named_and_rebuilt_by_prepare(synth_set, fast_config, tmp_path):
    dataset = read_development(synth_set)
    path = Path(build_stores(dataset, [fast_config], tmp_path, shard_size=16).built[0])
    expected = FeatureStore(path).features(np.arange(len(dataset)))
    shard = path / "part-00001.arrow"
    size = shard.stat().st_size
    os.truncate(shard, 1000)
    with pytest.raises(AscError, match=f"{path}: damaged store: part-00001.arrow is 1000 bytes, the manifest records {size}"):
        FeatureStore(path)
    report = build_stores(dataset, [fast_config], tmp_path, shard_size=16)
    assert report.built == [str(path)] and "part-00001.arrow is 1000 bytes" in report.damaged[str(path)]
    np.testing.assert_array_equal(FeatureStore(path).features(np.arange(len(dataset))), expected)
    # a manifest from before the sizes were recorded: the shard's Arrow footer is read instead
    manifest = json.loads((path / MANIFEST).read_text())
    for shard_entry in manifest["shards"]:
        del shard_entry["bytes"]
    (path / MANIFEST).write_text(json.dumps(manifest))
    assert build_stores(dataset, [fast_config], tmp_path, shard_size=16).up_to_date == [str(path)]
    os.truncate(shard, size - 100)
    with pytest.raises(AscError, match="part-00001.arrow does not read as Arrow"):
        FeatureStore(path)
    assert build_stores(dataset, [fast_config], tmp_path, shard_size=16).built == [str(path)]


def test_numpy_scalars_are_plain_settings(fast_config):
    config = fast_config.__class__(**{**fast_config.to_dict(), "n_mels": np.int64(32), "fmax": np.float32(11025)})
    assert config == fast_config and type(config.n_mels) is int and config.key() == fast_config.key()


def test_a_corrected_store_fitted_by_the_old_rule_is_not_current(synth_set, fast_config, tmp_path):
    """Corrected stores from before the correction left out the validation locations are superseded."""
    from asc.__main__ import resolve_store
    from asc.store import current_stores

    corrected_config = fast_config.__class__(**{**fast_config.to_dict(), "spectrum_correction": True})
    path = Path(build_stores(read_development(synth_set), [corrected_config], tmp_path).built[0])
    assert [p for p, _ in current_stores(tmp_path)] == [path]
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["correction"]
    manifest["dataset"]["devices"] = ["A", "b", "c"]  # and a store written from capital device letters
    (path / MANIFEST).write_text(json.dumps(manifest))
    assert current_stores(tmp_path) == []
    with pytest.raises(AscError, match="no spectrum-corrected feature store here"):
        resolve_store(str(tmp_path), spectrum_correction=True)
    assert FeatureStore(path).manifest["dataset"]["devices"] == ["a", "b", "c"]


def test_a_store_root_that_is_a_file_is_one_line(synth_set, fast_config, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(AscError, match=f"{tmp_path / 'file'}: cannot write a feature store here"):
        build_stores(read_development(synth_set), [fast_config], tmp_path / "file")
    with pytest.raises(AscError, match="shard_size must be at least 1"):
        build_stores(read_development(synth_set), [fast_config], tmp_path / "root", shard_size=0)


def test_a_refused_build_takes_back_the_store_root_it_made(synth_set, fast_config, tmp_path):
    """A clip that does not decode stops the build in one line naming it; a store root the build made
    for it is gone again (no empty .locks or .staging left), one that was there stays."""
    data = tmp_path / "data"
    shutil.copytree(synth_set, data)
    bad = sorted((data / "audio").glob("*.wav"))[5]
    bad.write_bytes(b"not audio at all" * 64)
    for root in (tmp_path / "new" / "store", tmp_path / "there"):
        if root.name == "there":
            root.mkdir()
        with pytest.raises(AscError, match=f"{bad}: not a readable audio file"):
            build_stores(read_development(data), [fast_config], root)
        assert not (tmp_path / "new" / "store").exists() and (tmp_path / "new").is_dir()
    assert sorted(p.name for p in (tmp_path / "there").iterdir()) == [".locks", ".staging"]


def test_a_manifest_of_the_wrong_shape_is_one_line_naming_it(synth_set, fast_config, tmp_path):
    from asc.store import current_stores

    path = Path(build_stores(read_development(synth_set), [fast_config], tmp_path).built[0])
    manifest = json.loads((path / MANIFEST).read_text())
    for key, value, why in (("shape", "x", "shape: a list expected, not \"x\""),
                            ("shape", [32], "shape: \\[n_mels, frames\\] expected, not \\[32\\]"),
                            ("name", None, "name: a string expected, not null"),
                            ("shards", {}, "shards: a list expected")):
        (path / MANIFEST).write_text(json.dumps({**manifest, key: value}))
        for read in (FeatureStore, lambda p: current_stores(p.parent)):
            with pytest.raises(AscError, match=f"{path / MANIFEST}: corrupt manifest \\({why}"):
                read(path)


def read_only(path: Path):
    """Make ``path`` read-only for this process, also as root (whose permission bits do not bind):
    chattr +i where the filesystem has it, else skip. Returns the undo."""
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(path)], check=True)
        return lambda: subprocess.run(["chmod", "-R", "u+w", str(path)], check=True)
    if subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
        pytest.skip("cannot make a folder read-only for root here (no chattr +i)")
    return lambda: subprocess.run(["chattr", "-R", "-i", str(path)], check=True)


def test_an_up_to_date_read_only_store_is_still_usable(synth_set, fast_config, tmp_path):
    from asc.models import ModelConfig
    from asc.train import TrainConfig, train

    dataset = read_development(synth_set)
    path = build_stores(dataset, [fast_config], tmp_path / "store").built[0]
    config = TrainConfig(store=path, model=ModelConfig(name="cnn"), epochs=1, batch_size=8,
                         enhancement=Enhancement("gms", median_filter=(3, 5)))
    expected = train(config)  # builds the median-filter cache
    undo = read_only(tmp_path / "store")
    try:
        assert build_stores(dataset, [fast_config], tmp_path / "store").up_to_date == [path]
        other_bands = fast_config.__class__(**{**fast_config.to_dict(), "n_mels": 16})
        with pytest.raises(AscError, match="store: cannot write a feature store here"):
            build_stores(dataset, [other_bands], tmp_path / "store")
        again = train(config)  # reads the cache, writes nothing
        assert again["history"][0]["loss"] == expected["history"][0]["loss"]
        other = dataclasses.replace(config, enhancement=Enhancement("gms", median_filter=(5, 5)))
        with pytest.raises(AscError, match="cannot write the gms-medfilt5x5 cache beside this store"):
            train(other)
    finally:
        undo()
