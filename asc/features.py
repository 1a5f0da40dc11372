"""Log-Mel spectrograms (and spectrum-corrected ones) as pure functions over arrays.

The paper's features: librosa's Mel spectrogram with a 4096-point frame, a 1024-sample hop, 128 Mel
bands up to 22050 Hz, power 2, the natural log of (S + float32 eps), and the last of 431 frames
dropped, giving 128 x 430 for a 10 s, 44.1 kHz clip.

The STFT is centred and pads the clip's ends with zeros (``pad_mode="constant"``, librosa 0.10's
default and this project's); the paper's librosa (0.6 / 0.7) padded by reflection, which changes the
first two frames and the last one of each clip (of 430) and nothing else. ``pad_mode="reflect"``
(``prepare --pad-mode reflect``) reproduces the paper's features exactly.

Several Mel-band counts share one STFT (:func:`log_mels`): the STFT is most of the cost, so asking for
64, 128 and 256 bands costs little more than asking for one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers as numbers_module
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile

from asc.errors import AscError

PAD_MODES = ("constant", "reflect")
EPS = float(np.finfo(np.float32).eps)  # the paper's code: np.log(S + np.finfo(np.float32).eps)


@dataclass(frozen=True)
class FeatureConfig:
    """One feature configuration: one folder of the store."""

    sample_rate: int = 44100  # the real set's rate; another rate is an error unless resample is on
    n_fft: int = 4096  # paper: 4096-point frames (93 ms)
    hop_length: int = 1024  # paper: 1024-sample hop -> 431 frames for 10 s
    n_mels: int = 128  # paper: 128 bands (more bands keep a device's response flat within each band)
    fmin: float = 0.0  # librosa's default
    fmax: float | None = 22050.0  # paper: up to 22050 Hz; None = sample_rate / 2
    power: float = 2.0  # paper / librosa: power spectrogram
    drop_last_frame: bool = True  # paper's code: fea[:, :-1] -> 430 frames
    dtype: str = "float32"  # storage type; "float16" halves the store
    resample: bool = False  # resample clips at another rate instead of refusing them
    spectrum_correction: bool = False  # DCASE2019 1B winner: per-device STFT correction from parallel pairs
    pad_mode: str = "constant"  # STFT edge padding: zeros (librosa >= 0.10) or "reflect" (the paper's librosa)

    def __post_init__(self):
        """Settings that cannot give finite features are refused here, before any audio is read."""
        for f in dataclasses.fields(self):  # NumPy scalars (from a sweep, a YAML loader) as plain numbers
            if isinstance(getattr(self, f.name), np.generic):
                object.__setattr__(self, f.name, getattr(self, f.name).item())
        if self.dtype not in ("float32", "float16"):
            raise AscError(f"dtype must be float32 or float16, not {self.dtype!r}")
        if self.pad_mode not in PAD_MODES:
            raise AscError(f"pad_mode must be one of {', '.join(PAD_MODES)}, not {self.pad_mode!r}")
        numbers = {"sample_rate": self.sample_rate, "n_fft": self.n_fft, "hop_length": self.hop_length,
                   "n_mels": self.n_mels, "fmin": self.fmin, "power": self.power}
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, numbers_module.Real) or not math.isfinite(value):
                raise AscError(f"{name} must be a finite number, not {value!r}")
        for name in ("sample_rate", "n_mels", "hop_length"):
            if numbers[name] < 1:
                raise AscError(f"{name} must be at least 1, not {numbers[name]!r}")
        if self.n_fft < 16:
            raise AscError(f"n_fft must be at least 16, not {self.n_fft!r}")
        if self.n_mels > self.n_fft // 2 + 1:
            raise AscError(f"n_mels {self.n_mels} is more bands than n_fft {self.n_fft} has frequency bins "
                           f"({self.n_fft // 2 + 1})")
        if self.power <= 0:
            raise AscError(f"power must be positive, not {self.power!r}")
        nyquist = self.sample_rate / 2
        fmax = nyquist if self.fmax is None else self.fmax
        if self.fmin < 0:
            raise AscError(f"fmin must be at least 0 Hz, not {self.fmin!r}")
        if isinstance(fmax, bool) or not isinstance(fmax, numbers_module.Real) or not math.isfinite(fmax):
            raise AscError(f"fmax must be a finite number or None, not {self.fmax!r}")
        if fmax > nyquist:
            raise AscError(f"fmax {fmax} Hz is above the Nyquist frequency of {self.sample_rate} Hz audio ({nyquist:g} Hz)")
        if self.fmin >= fmax:
            raise AscError(f"fmin {self.fmin:g} Hz must be below fmax {fmax:g} Hz")

    def check_mel_bands(self) -> None:
        """Every Mel band must hold some FFT bin: an empty one (too many bands for n_fft between fmin
        and fmax) is a constant log(eps) row, not a feature. librosa only warns; this refuses."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa's "Empty filters detected": said below, in one line
            basis = mel_basis(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax)
        empty = int(np.count_nonzero(np.asarray(basis.sum(axis=1)).ravel() == 0))
        if empty:
            raise AscError(f"n_mels {self.n_mels}: {empty} of the bands hold no frequency bin of n_fft {self.n_fft} "
                           f"between fmin {self.fmin:g} and fmax {self.fmax if self.fmax is not None else self.sample_rate / 2:g} Hz "
                           "(fewer bands, or a larger n_fft)")

    def check_clip_length(self, samples: int, where: str) -> None:
        """A frame or hop longer than the clips gives one frame of padding per clip, not features."""
        for name in ("n_fft", "hop_length"):
            if getattr(self, name) > samples:
                raise AscError(f"{where}: {samples} samples ({samples / self.sample_rate:.3g} s at {self.sample_rate} Hz), "
                               f"shorter than {name} {getattr(self, name)}: a frame or hop longer than the clips "
                               "gives no features")

    def frames(self, samples: int) -> int:
        """Frames a clip of ``samples`` samples gives (librosa's centred STFT, minus the dropped one)."""
        return 1 + samples // self.hop_length - int(self.drop_last_frame)

    def clip_samples(self, frames: int) -> tuple[int, int]:
        """The shortest and longest clip, in samples, that give ``frames`` frames (:meth:`frames`'s inverse)."""
        lo = (frames - 1 + int(self.drop_last_frame)) * self.hop_length
        return lo, lo + self.hop_length - 1

    def clip_seconds(self, frames: int) -> str:
        """:meth:`clip_samples` as a user states a length: ``2.99-3.02 s``."""
        return "-".join(f"{n / self.sample_rate:.2f}" for n in self.clip_samples(frames)) + " s"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["pad_mode"] == "constant":  # the default before the option existed: stores keep their names
            del d["pad_mode"]
        return d

    def key(self) -> str:
        """A short stable hash of the configuration."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def stft_key(self) -> tuple:
        """Configurations with the same key can share one STFT."""
        return (self.sample_rate, self.n_fft, self.hop_length, self.power, self.resample, self.spectrum_correction,
                self.pad_mode)


def load_audio(path: str | Path, sample_rate: int, resample: bool = False,
               convert: str = "prepare --resample, or a space's features: {resample: true}, converts it") -> np.ndarray:
    """Read a clip as float32 mono at ``sample_rate``.

    A file at another rate is an AscError naming it (and ``convert``, what would convert it) unless
    ``resample`` (librosa's default resampler); a file that cannot be decoded is an AscError naming it.
    Multichannel files are averaged to mono.
    """
    try:
        y, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        raise AscError(f"{path}: not a readable audio file ({str(exc).splitlines()[0]})") from None
    y = y.mean(axis=1) if y.shape[1] > 1 else y[:, 0]
    if len(y) == 0:
        raise AscError(f"{path}: audio file holds no samples")
    if not np.isfinite(y).all():  # float WAVs can hold NaN or inf; no feature of them is meaningful
        raise AscError(f"{path}: audio holds {np.count_nonzero(~np.isfinite(y))} NaN or infinite samples")
    if sr != sample_rate:
        if not resample:
            raise AscError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz ({convert})")
        import librosa  # late: the CLI's parsers import this module (start-up time)

        y = librosa.resample(y, orig_sr=sr, target_sr=sample_rate)
    return np.ascontiguousarray(y, dtype=np.float32)


def check_finite(x: np.ndarray, y: np.ndarray, path, config: "FeatureConfig") -> np.ndarray:
    """``x``, the features of the clip ``y`` read from ``path``, or an AscError naming the clip when
    they are not finite (e.g. float audio near 1e30, whose power overflows float32): everything
    downstream (statistics, the argmax of a prediction) would turn it into a silently wrong number."""
    if not np.isfinite(x).all():
        raise AscError(f"{path}: its log-Mel features are not finite ({np.count_nonzero(~np.isfinite(x))} values; "
                       f"peak |sample| {np.abs(y).max():.3g}, power {config.power:g})")
    return x


@lru_cache(maxsize=16)
def mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None):
    """librosa's Slaney Mel filterbank, ``[n_mels, 1 + n_fft // 2]``, as a float32 CSR matrix.

    Each triangle covers a few bins (1.5% of the 128 x 2049 matrix is non-zero), so the sparse
    product costs ~0.5 ms a clip where librosa's dense one costs 7 ms (14 ms at 256 bands): with it,
    extra band counts on the same STFT are nearly free.
    """
    import librosa  # late: as in load_audio
    import scipy.sparse

    return scipy.sparse.csr_matrix(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax))


def stft_magnitude(y: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """``|STFT|`` as librosa's melspectrogram computes it (Hann window, centred, ``config.pad_mode`` padding).

    y : np.ndarray [shape=(..., samples)] -> [shape=(..., 1 + n_fft // 2, frames)]
    """
    import librosa  # late: as in load_audio

    return np.abs(librosa.stft(y, n_fft=config.n_fft, hop_length=config.hop_length, center=True, pad_mode=config.pad_mode))


def log_mel_from_power(power: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Mel projection, log and frame drop of a power spectrogram (``|STFT| ** config.power``).

    power : np.ndarray [shape=(..., 1 + n_fft // 2, frames)] -> [shape=(..., n_mels, frames')]
    """
    basis = mel_basis(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
    bins, frames = power.shape[-2:]
    # [..., F, T] -> [F, (...) * T] for one sparse product, then back
    flat = np.moveaxis(power, -2, 0).reshape(bins, -1)
    mel = np.asarray(basis @ flat, dtype=np.float32).reshape((config.n_mels,) + power.shape[:-2] + (frames,))
    mel = np.moveaxis(mel, 0, -2)
    if config.drop_last_frame:
        mel = mel[..., :-1]
    return np.ascontiguousarray(np.log(mel + np.float32(EPS)), dtype=config.dtype)


def log_mel(y: np.ndarray, config: FeatureConfig = FeatureConfig(), correction: np.ndarray | None = None) -> np.ndarray:
    """The paper's log-Mel spectrogram of ``y``.

    y : np.ndarray [shape=(..., samples)]
    correction : np.ndarray [shape=(1 + n_fft // 2,)], optional; multiplies the STFT magnitude
    Returns np.ndarray [shape=(..., n_mels, frames)]
    """
    return log_mels(y, [config], correction)[0]


def log_mels(y: np.ndarray, configs: list[FeatureConfig], correction: np.ndarray | None = None) -> list[np.ndarray]:
    """Log-Mel spectrograms of ``y`` for several configurations, one STFT per distinct STFT setting."""
    powers: dict[tuple, np.ndarray] = {}
    out = []
    for config in configs:
        key = config.stft_key()
        if key not in powers:
            magnitude = stft_magnitude(y, config)
            if correction is not None:
                magnitude *= correction[:, None]
            with np.errstate(over="ignore"):  # inf from absurd levels: the store refuses it, naming the clip
                powers[key] = magnitude if config.power == 1 else magnitude**config.power
        out.append(log_mel_from_power(powers[key], config))
    return out


def mean_magnitude_spectrum(y: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """A clip's STFT magnitude averaged over frames: ``[1 + n_fft // 2]`` (float64)."""
    return stft_magnitude(y, config).mean(axis=-1, dtype=np.float64)


def correction_coefficients(pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Spectrum correction coefficients (Kosmider, DCASE2019 Task 1B winner).

    pairs : {device: [(reference mean magnitude spectrum, device mean magnitude spectrum), ...]}
        one entry per parallel pair of the training split.
    Returns {device: coefficients [shape=(1 + n_fft // 2,)]}: the mean over pairs of the reference's
    spectrum divided by the device's, float32. Multiplied onto the device's STFT magnitude it brings
    the device's mean spectrum onto the reference's.
    """
    coefficients = {}
    for device, members in pairs.items():
        if not members:
            continue
        ratios = [ref / np.maximum(dev, 1e-12) for ref, dev in members]
        coefficients[device] = np.mean(ratios, axis=0).astype(np.float32)
    return coefficients
