"""Log-Mel extraction and the enhancement functions, against librosa / scipy and hand-derived facts."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile

from asc import AscError
from asc.enhance import Enhancement, global_normalize, mean_subtraction, median_filter
from asc.features import EPS, FeatureConfig, load_audio, log_mel, log_mels


def _noise(seconds=2.0, sr=44100, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal(int(seconds * sr)).astype(np.float32) * 0.1
    return np.cumsum(y) * 0.01 + y  # some colour, so bands differ


def test_paper_settings_agree_with_librosa():
    y = _noise(10.0)
    ref = np.log(librosa.feature.melspectrogram(y=y, sr=44100, n_fft=4096, hop_length=1024, n_mels=128,
                                                fmax=22050) + EPS)[:, :-1]
    ours = log_mel(y, FeatureConfig())
    assert ours.shape == (128, 430) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-3


@pytest.mark.parametrize("n_mels, n_fft, hop, power", [(64, 2048, 512, 2.0), (40, 1024, 256, 1.0)])
def test_other_settings_agree_with_librosa(n_mels, n_fft, hop, power):
    y = _noise(3.0, 22050)
    config = FeatureConfig(sample_rate=22050, n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmax=None,
                           power=power, drop_last_frame=False)
    ref = np.log(librosa.feature.melspectrogram(y=y, sr=22050, n_fft=n_fft, hop_length=hop, n_mels=n_mels,
                                                power=power) + EPS)
    assert np.abs(log_mel(y, config) - ref).max() < 1e-3


def test_several_band_counts_share_one_stft_and_match_single_runs():
    y = _noise(2.0)
    configs = [FeatureConfig(n_mels=n) for n in (64, 128, 256)]
    for config, together in zip(configs, log_mels(y, configs)):
        np.testing.assert_array_equal(together, log_mel(y, config))


def test_batched_equals_per_clip():
    batch = np.stack([_noise(1.0, seed=s) for s in range(3)])
    config = FeatureConfig(n_mels=64)
    np.testing.assert_allclose(log_mel(batch, config), np.stack([log_mel(b, config) for b in batch]), atol=1e-5)


def test_float16_storage():
    x = log_mel(_noise(1.0), FeatureConfig(dtype="float16"))
    assert x.dtype == np.float16
    assert np.abs(x.astype(np.float32) - log_mel(_noise(1.0))).max() < 0.02  # float16 keeps ~3 digits


def test_wrong_sample_rate_is_refused_unless_resampling(tmp_path):
    path = tmp_path / "clip.wav"
    soundfile.write(path, _noise(1.0, 22050), 22050, subtype="PCM_24")
    with pytest.raises(AscError, match=r"clip\.wav: sample rate 22050 Hz, expected 44100"):
        load_audio(path, 44100)
    assert len(load_audio(path, 44100, resample=True)) == 44100


def test_corrupt_audio_names_the_file(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    with pytest.raises(AscError, match="broken.wav"):
        load_audio(path, 44100)


# ---- enhancement -----------------------------------------------------------------------------------
def _features(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 40, 120)) + np.linspace(-5, 5, 40)[:, None]).astype(np.float32)


def test_mean_subtraction_removes_a_per_band_constant_exactly():
    """The paper's eq. 5-6: a clip plus a device's per-band offset gives the clip's own result."""
    x = _features(1)[0]
    offset = np.random.default_rng(1).uniform(-3, 3, size=(40, 1)).astype(np.float32)
    np.testing.assert_allclose(mean_subtraction(x + offset), mean_subtraction(x), atol=1e-5)
    np.testing.assert_allclose(mean_subtraction(x).mean(axis=-1), 0, atol=1e-5)


def test_median_filter_equals_scipy_medfilt2d():
    x = _features(2)
    for size in [(7, 21), (3, 5), (1, 9)]:
        ours = median_filter(x, size)
        for clip, filtered in zip(x, ours):
            expected = clip.astype(np.float64) - scipy.signal.medfilt2d(clip.astype(np.float64), size)
            np.testing.assert_allclose(filtered, expected, atol=1e-5)


@pytest.mark.parametrize("size", [(6, 21), (7, 20), (0, 3)])
def test_median_filter_needs_odd_sizes(size):
    with pytest.raises(AscError, match="odd"):
        median_filter(_features(1), size)
    with pytest.raises(AscError, match="odd"):
        Enhancement(normalization="gms", median_filter=size)


def test_global_normalisation():
    x = _features(2)
    mean, std = np.linspace(-5, 5, 40), np.linspace(1, 2, 40)
    np.testing.assert_allclose(global_normalize(x, mean), x - mean[:, None], atol=1e-6)
    np.testing.assert_allclose(global_normalize(x, mean, std), (x - mean[:, None]) / std[:, None], atol=1e-5)


ENHANCEMENTS = [
    Enhancement("gmsvn"),
    Enhancement("gms", mean_subtraction=True),
    Enhancement("gms", median_filter=(7, 21)),
    Enhancement("gms", mean_subtraction=True, median_filter=(3, 5)),
    Enhancement("none"),
]


@pytest.mark.parametrize("enhancement", ENHANCEMENTS, ids=str)
def test_every_enhancement_is_pure_and_batched_equals_per_clip(enhancement):
    x = _features(3)
    before = x.copy()
    mean, std = x.mean(axis=(0, 2)), x.std(axis=(0, 2))
    batched = enhancement(x, mean, std)
    np.testing.assert_array_equal(x, before)  # the input is never changed
    np.testing.assert_allclose(batched, np.stack([enhancement(c, mean, std) for c in x]), atol=1e-6)
    assert batched.shape == x.shape and batched.dtype == np.float32


def test_unknown_normalisation_is_refused():
    with pytest.raises(AscError, match="normalization"):
        Enhancement("zscore")


def test_reflect_padding_changes_only_the_edge_frames():
    """The paper's librosa padded the STFT by reflection; ours pads with zeros unless asked."""
    from asc.features import FeatureConfig, log_mel

    y = np.random.default_rng(0).standard_normal(44100).astype(np.float32) * 0.1
    zeros, reflect = (log_mel(y, FeatureConfig(pad_mode=mode)) for mode in ("constant", "reflect"))
    changed = np.nonzero(np.abs(zeros - reflect).max(axis=0) > 1e-4)[0].tolist()
    assert changed == [0, 1, zeros.shape[1] - 1]
    import librosa

    paper = np.log(librosa.feature.melspectrogram(y=y, sr=44100, n_fft=4096, hop_length=1024, n_mels=128, fmax=22050,
                                                  pad_mode="reflect") + np.finfo(np.float32).eps)[:, :-1]
    np.testing.assert_allclose(reflect, paper, atol=1e-3)
    assert "pad_mode" not in FeatureConfig().to_dict()  # stores made before the option keep their names
    assert FeatureConfig(pad_mode="reflect").key() != FeatureConfig().key()


@pytest.mark.parametrize("drop", [True, False])
def test_the_clip_lengths_a_frame_count_names_are_exactly_those_that_give_it(drop):
    """What a wrong-length message tells the user: the shortest and longest clip of the trained frames."""
    config = FeatureConfig(drop_last_frame=drop)
    for frames in (2, 129, 431):
        lo, hi = config.clip_samples(frames)
        assert config.frames(lo) == config.frames(hi) == frames
        assert config.frames(lo - 1) == frames - 1 and config.frames(hi + 1) == frames + 1
    assert FeatureConfig().clip_seconds(FeatureConfig().frames(10 * 44100)) == "9.98-10.01 s"  # the real set
