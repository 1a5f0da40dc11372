"""The synthetic multi-device set: layout round trip, splits, determinism, and the device physics."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile

from asc import SCENES, AscError
from asc.dataset import read_development
from asc.synth import SynthConfig, device_response_db, plan, write_dataset
import asc.synth

REPO = Path(__file__).resolve().parents[1]
SMALL = SynthConfig(segments_per_scene=6, parallel_per_scene=3, seconds=2.0, sample_rate=22050, seed=7)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    write_dataset(out, SMALL, workers=2)
    return out


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_synth_then_describe_round_trip(tmp_path):
    out = tmp_path / "set"
    args = ["--segments-per-scene", "6", "--parallel-per-scene", "3", "--seconds", "1", "--sample-rate", "16000"]
    run = subprocess.run([sys.executable, "-m", "asc", "synth", str(out), *args], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "-m", "asc", "describe", str(out), "--json"], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    # 6 A segments per scene, 4 in train locations and 2 in evaluate; of the 3 parallel groups one
    # trains and two evaluate; the unseen devices s1 and s2 record the evaluate ones only.
    assert summary["splits"] == {"train": {"a": 40, "b": 10, "c": 10},
                                 "evaluate": {"a": 20, "b": 20, "c": 20, "s1": 20, "s2": 20}}
    assert summary["scenes"] == {scene: 6 + 3 + 3 + 2 + 2 for scene in SCENES}
    assert summary["parallel_groups"] == 30
    assert summary["parallel_groups_by_split"] == {"train": 10, "evaluate": 20}
    assert summary["audio"]["sample_rates"] == {"16000": 160}
    assert summary["audio"]["bit_depths"] == {"24": 160}
    assert summary["audio"]["seconds"] == {"1.0": 160}
    assert summary["audio"]["channels"] == {"1": 160}


def test_layout_matches_the_real_files(small_set):
    assert (small_set / "meta.csv").read_text().splitlines()[0] == "filename\tscene_label\tidentifier\tsource_label"
    setup = small_set / "evaluation_setup"
    assert (setup / "fold1_train.csv").read_text().splitlines()[0] == "filename\tscene_label"
    assert (setup / "fold1_test.csv").read_text().splitlines()[0] == "filename"
    info = soundfile.info(str(next((small_set / "audio").glob("*-b.wav"))))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (22050, 1, "PCM_24", "WAV")


def test_splits_are_by_location_and_parallel_groups_share_them(small_set):
    dataset = read_development(small_set)
    train = {c.identifier for c in dataset.split("train")}
    evaluate = {c.identifier for c in dataset.split("evaluate")}
    assert train and evaluate and not train & evaluate
    for members in dataset.parallel_groups().values():
        split = next(iter(members.values())).split  # the unseen devices record evaluation segments only
        assert set(members) == ({"a", "b", "c"} if split == "train" else {"a", "b", "c", "s1", "s2"})
        assert len({c.split for c in members.values()}) == 1
    for scene in SCENES:  # every scene has several cities and locations in each split
        for split in ("train", "evaluate"):
            places = {c.identifier for c in dataset.split(split) if c.scene == scene}
            assert len(places) >= 2


def test_deterministic_for_a_seed_whatever_the_workers(tmp_path, small_set):
    write_dataset(tmp_path / "again", SMALL, workers=1)
    assert _digest(tmp_path / "again") == _digest(small_set)
    write_dataset(tmp_path / "other", SynthConfig(**{**SMALL.__dict__, "seed": 8}), workers=1)
    assert _digest(tmp_path / "other") != _digest(small_set)


def _log_mel(path: Path) -> np.ndarray:
    y, sr = soundfile.read(str(path), dtype="float32")
    return np.log(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=512, n_mels=64) + 1e-10)


def test_mean_subtraction_leaves_a_share_of_the_device_effect(small_set):
    """Per-clip mean subtraction removes a device's response (a constant per band in log-Mel, the
    paper's eq. 4) but not what depends on the level: compression and gain control that follow the
    events, the noise floor, clipping. Of the RMS log-Mel difference between a parallel pair, the
    share left after subtracting each clip's mean per band is stated: 0.2 to 0.7 on average (a
    linear device leaves about 0.1, which is the frames at the clip's edges and the noise)."""
    dataset = read_development(small_set)
    shares = {"b": [], "c": []}
    for members in dataset.parallel_groups().values():
        reference = _log_mel(dataset.path(members["a"]))[:, 2:-2]  # edge frames are half padding
        for device in shares:
            diff = _log_mel(dataset.path(members[device]))[:, 2:-2] - reference
            residual = diff - diff.mean(axis=1, keepdims=True)
            shares[device].append(np.sqrt(np.mean(residual**2) / np.mean(diff**2)))
    for device, values in shares.items():
        assert 0.2 < np.mean(values) < 0.7, (device, np.mean(values))


def test_long_term_spectrum_ratio_follows_the_device_response(small_set):
    """Averaged over a parallel pair, B's power spectrum over A's has the shape of |H_B / H_A|^2 in
    the mid band, up to a level: the dynamics and each take's sensitivity move the whole spectrum."""
    dataset = read_development(small_set)
    n_fft, sr = 2048, SMALL.sample_rate
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    mid = (freqs > 300) & (freqs < 6000)
    expected = device_response_db("b", freqs) - device_response_db("a", freqs)
    measured = []
    for members in dataset.parallel_groups().values():
        power = {}
        for device in ("a", "b"):
            y, _ = soundfile.read(str(dataset.path(members[device])), dtype="float64")
            power[device] = (np.abs(librosa.stft(y, n_fft=n_fft, hop_length=512)) ** 2).mean(axis=1)
        ratio = 10 * np.log10(power["b"] / power["a"])
        measured.append(ratio - np.median(ratio[mid] - expected[mid]))
    error = np.median(measured, axis=0)[mid] - expected[mid]
    assert np.median(np.abs(error)) < 1.5
    assert np.percentile(np.abs(error), 90) < 4.0


def _tone_bursts(sr: int, quiet_db: float, loud_db: float) -> np.ndarray:
    """1 s of a quiet 1 kHz tone, 1 s of the same tone loud, 1 s quiet again (levels in dBFS RMS)."""
    t = np.arange(3 * sr) / sr
    level = np.where((t >= 1) & (t < 2), loud_db, quiet_db)
    return (np.sqrt(2) * 10 ** (level / 20) * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)


def _segment_gain_db(y_in: np.ndarray, y_out: np.ndarray, sr: int, part: slice) -> float:
    """Output over input level, in dB, over the middle half of each second (past the attack)."""
    rms = lambda y: np.sqrt(np.mean(y[part].astype(np.float64) ** 2))
    return 20 * np.log10(rms(y_out) / rms(y_in))


@pytest.mark.parametrize("device", ["b", "c"])
def test_dynamics_lower_loud_passages_more_than_quiet_ones(device):
    dynamics = asc.synth.DEVICE_PROFILES[device].dynamics
    sr = 16000
    y = _tone_bursts(sr, -45.0, -10.0)
    out = dynamics(y, sr)
    quiet = _segment_gain_db(y, out, sr, slice(int(0.25 * sr), int(0.75 * sr)))
    loud = _segment_gain_db(y, out, sr, slice(int(1.25 * sr), int(1.75 * sr)))
    assert loud < quiet - 10, (quiet, loud)  # 35 dB in, at most 25 dB out
    # After the burst the gain comes back within a few release times (300 ms for C's AGC).
    assert _segment_gain_db(y, out, sr, slice(int(2.8 * sr), int(3.0 * sr))) == pytest.approx(quiet, abs=2.0)


def test_agc_raises_quiet_passages():
    dynamics = asc.synth.DEVICE_PROFILES["c"].dynamics
    sr = 16000
    y = _tone_bursts(sr, -45.0, -45.0)
    assert _segment_gain_db(y, dynamics(y, sr), sr, slice(sr, 2 * sr)) == pytest.approx(dynamics.max_gain_db, abs=0.5)


@pytest.mark.parametrize("device", ["b", "c"])
def test_noise_floor_fills_quiet_bands(device):
    """A phone's recording of near silence is its self-noise, and a band whose signal lies under that
    floor carries the floor, not the signal scaled: a 10 dB change of a quiet tone moves the band by
    far less than 10 dB on the phone (and by 10 dB on device A).
    Levels: the tone in dBFS RMS, the floor over the whole band (so -20 dB in a 200 Hz band)."""
    sr = 44100
    rng = np.random.default_rng(0)
    silence = asc.synth.finish(np.zeros(sr, dtype=np.float32), device, sr, rng)
    profile = asc.synth.DEVICE_PROFILES[device]
    floor_db = 20 * np.log10(np.sqrt(np.mean(silence.astype(np.float64) ** 2)))
    # The AGC lifts silence by up to its maximum gain; the compressor leaves it alone.
    lift = profile.dynamics.max_gain_db + profile.dynamics.makeup_db
    assert floor_db == pytest.approx(profile.noise_db + lift, abs=1.5)

    t = np.arange(sr) / sr
    def band_db(dev: str, tone_db: float) -> float:
        tone = (np.sqrt(2) * 10 ** (tone_db / 20) * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
        y = asc.synth.finish(tone, dev, sr, np.random.default_rng(1))
        spectrum = np.abs(np.fft.rfft(y.astype(np.float64))) ** 2
        return 10 * np.log10(spectrum[900:1101].sum())  # 900-1100 Hz
    # Tones that reach the device's floor in that band (the floor is white: -20.4 dB in 200 Hz), and
    # 10 dB under it. ``finish`` takes the signal after the response, so the tone is set there.
    at_floor = profile.noise_db - 10 * np.log10(sr / 2 / 200)
    assert band_db(device, at_floor) - band_db(device, at_floor - 10) < 3.0
    assert band_db("a", at_floor) - band_db("a", at_floor - 10) == pytest.approx(10.0, abs=0.5)


def test_clipping_bounds_the_samples_of_the_device_with_less_headroom():
    sr = 44100
    loud = _tone_bursts(sr, -6.0, -3.0) * 2.0  # peaks above 0 dBFS before the converter
    profile = asc.synth.DEVICE_PROFILES["b"]
    limit = 10 ** (profile.clip_dbfs / 20) * 10 ** (profile.dynamics.makeup_db / 20)
    out = asc.synth.finish(loud, "b", sr, np.random.default_rng(0))
    assert np.abs(out).max() <= limit * 1.01
    # Clipped, not scaled: the waveform's crest factor falls from a sine's sqrt(2) towards a square's 1.
    middle = out[int(1.25 * sr):int(1.75 * sr)].astype(np.float64)
    assert np.abs(middle).max() / np.sqrt(np.mean(middle**2)) < 1.25


def test_held_out_training_locations_measure_every_device():
    """The default set's validation protocol holds out at least 20 B and 20 C clips, whichever
    locations its seed holds out, while B and C each stay 5-10% of the training clips."""
    from asc.dataset import Clip
    from asc.train import TrainConfig, split_indices

    segments = plan(SynthConfig())
    clips = [Clip(filename=seg.filename(d), split=seg.place.split, scene=seg.place.scene, city=seg.place.city,
                  location=seg.place.location, segment=seg.segment, device=d) for seg in segments for d in seg.devices]
    train = [c for c in clips if c.split == "train"]
    for device in ("b", "c"):
        assert 0.05 <= sum(c.device == device for c in train) / len(train) <= 0.10
    for validation_seed in range(5):
        _, held, _ = split_indices(clips, TrainConfig(store="default", protocol="validation", validation_seed=validation_seed))
        for device in ("b", "c"):
            assert sum(clips[i].device == device for i in held) >= 20


def test_existing_folder_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(AscError, match="taken"):
        write_dataset(out, SMALL)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = asc.synth._write_segment

    def failing(segment, config, root):
        calls.append(segment)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(segment, config, root)

    monkeypatch.setattr(asc.synth, "_write_segment", failing)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "set", SMALL, workers=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, culprit", [
    (["--parallel-per-scene", "9", "--segments-per-scene", "4"], "--parallel-per-scene"),
    (["--seconds", "0"], "--seconds"),
    (["--sample-rate", "100"], "--sample-rate"),
])
def test_bad_options_give_one_line(tmp_path, args, culprit):
    run = subprocess.run([sys.executable, "-m", "asc", "synth", str(tmp_path / "x"), *args], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error:") and culprit in run.stderr
    assert not (tmp_path / "x").exists()


def test_plan_proportions_follow_the_real_fold():
    segments = plan(SynthConfig())
    train = [s for s in segments if s.place.split == "train"]
    clips = sum(len(s.devices) for s in train)
    b_share = sum("b" in s.devices for s in train) / clips
    assert 0.03 < b_share < 0.1  # real fold 1: 540 of 10265 training clips are B (5%)
    assert sum(len(s.devices) == 1 for s in train) > 5 * sum(len(s.devices) > 1 for s in train)


def test_one_pole_lowpass_is_the_recursive_filter():
    """The frequency-domain one-pole (no scipy.signal import in the synthesis processes) is the
    recursion y[i] = (1 - p) x[i] + p y[i - 1] that scipy.signal.lfilter computes."""
    from scipy.signal import lfilter

    x = np.random.default_rng(0).standard_normal(4000)
    pole = np.exp(-2 * np.pi * 200 / 16000)
    expected = lfilter([1 - pole], [1, -pole], x)
    assert np.allclose(asc.synth.one_pole_lowpass(x, 16000, 200), expected, atol=1e-9)
