"""Microphone impulse responses for DIR (device impulse response augmentation): the shipped MicIRP
set (``asc/data/micirp``, with its credit), reading and checking a folder of them, and each
response's gain per Mel band.

DIR (Morocutti et al., EUSIPCO 2023) convolves a device-A training clip with a real microphone's
impulse response. The responses are short (99% of the energy within 141 samples, median, of a
4096-sample window), so convolution is close to multiplying every STFT frame by the response's
frequency response H(f), and, where the spectrum is smooth within a Mel band, to adding
``ln(sum_f w_bf |H(f)|^p / sum_f w_bf)`` to the band's natural-log Mel energy (w: the Mel filter, p:
the features' power). That is what :func:`mel_gains` computes once per response and feature setting,
and what training adds to the stored features of the clips DIR picks: no audio is read during
training. The error of that approximation against convolving the waveform is measured by
``python -m search bench-devices --dir-error``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import librosa
import numpy as np
import soundfile

from asc.errors import AscError

SHIPPED = Path(__file__).resolve().parent / "data" / "micirp"
MIN_RATE = 8000  # Hz: a response below it cannot be resampled to another rate meaningfully


def response_folder(spec: str) -> Path:
    """``micirp`` -> the shipped set; anything else is a folder of WAV responses."""
    return SHIPPED if spec == "micirp" else Path(spec)


def read_responses(spec: str, sample_rate: int) -> list[tuple[str, np.ndarray]]:
    """(file name, response at ``sample_rate``, unit energy) for every WAV file of the folder; one
    AscError line for a folder that is missing or empty, or a file that is not mono audio, would need
    resampling from below ``MIN_RATE`` or otherwise cannot be resampled, or is silent."""
    folder = response_folder(spec)
    what = f"dir_responses {spec}"
    if not folder.is_dir():
        raise AscError(f"{what}: no such folder of impulse responses")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".wav", ".flac") and p.is_file())
    if not files:
        raise AscError(f"{what}: {folder} holds no .wav or .flac impulse responses")
    out = []
    for path in files:
        try:
            h, sr = soundfile.read(str(path), dtype="float64", always_2d=True)
        except (RuntimeError, OSError) as exc:
            raise AscError(f"{path}: not a readable impulse response ({str(exc).splitlines()[0]})") from None
        if h.shape[1] != 1:
            raise AscError(f"{path}: {h.shape[1]} channels; an impulse response is mono")
        h = h[:, 0]
        if len(h) == 0:
            raise AscError(f"{path}: holds no samples; an impulse response is at least one")
        if not np.isfinite(h).all():
            raise AscError(f"{path}: holds NaN or infinite samples")
        if sr < MIN_RATE and sr != sample_rate:  # librosa would stretch it (1 Hz: to seconds) without a word
            raise AscError(f"{path}: recorded at {sr} Hz, below {MIN_RATE} Hz: not a microphone's response at an "
                           f"audio rate; give it at the features' {sample_rate} Hz or near")
        if sr != sample_rate:
            try:
                h = librosa.resample(h, orig_sr=sr, target_sr=sample_rate)
            except Exception as exc:  # resampy / soxr raise several types for absurd rates
                raise AscError(f"{path}: cannot be resampled from {sr} to {sample_rate} Hz ({exc})") from None
        energy = float(np.sum(h * h))
        if not energy > 0:
            raise AscError(f"{path}: a silent impulse response (all samples zero)")
        out.append((path.name, h / np.sqrt(energy)))
    return out


@functools.lru_cache(maxsize=8)
def mel_gains(spec: str, sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None,
              power: float) -> np.ndarray:
    """``[responses, n_mels]``: each response's gain per Mel band, in the features' natural-log units
    (see the module docstring). Computed once per process for a folder and feature setting."""
    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    gains = []
    for _, h in read_responses(spec, sample_rate):
        response = np.abs(np.fft.rfft(h, n=max(n_fft, len(h))))
        if len(response) != n_fft // 2 + 1:  # a response longer than the window: its spectrum at the STFT's bins
            response = np.interp(np.linspace(0, 1, n_fft // 2 + 1), np.linspace(0, 1, len(response)), response)
        gains.append(np.log(np.maximum(basis @ response ** power, 1e-12) / np.maximum(basis.sum(axis=1), 1e-12)))
    return np.asarray(gains, np.float32)


def gains_for(spec: str, config) -> np.ndarray:
    """:func:`mel_gains` for a ``FeatureConfig``."""
    return mel_gains(spec, config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax, config.power)
