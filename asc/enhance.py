"""Feature enhancement and normalisation: pure functions, batched == per clip.

Every function takes ``x : np.ndarray [shape=(..., n_mels, frames)]`` (one clip or a batch) and
returns a new array of the same shape; the input is never changed. The paper's order, as its loader
applies them: global normalisation (GMS or GMSVN with training statistics) first, then mean
subtraction or the median filter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asc.errors import AscError

NORMALIZATIONS = ("none", "gms", "gmsvn")


def mean_subtraction(x: np.ndarray) -> np.ndarray:
    """Spectrogram-wise mean subtraction (the paper's eq. 5): remove each band's mean over time.

    A device's response adds a constant per band in the log-Mel domain (eq. 4); this removes it,
    together with the clip's own long-term spectrum.
    """
    return x - x.mean(axis=-1, keepdims=True)


def median_filter(x: np.ndarray, size: tuple[int, int] = (7, 21)) -> np.ndarray:
    """``x - medfilt(x, size)``: keep what changes faster than a (bands, frames) median follows.

    Equal to ``x - scipy.signal.medfilt2d(x, size)`` for every clip: zero-padded edges, odd sizes.
    The paper uses (7 Mel bands, 21 frames).
    """
    from scipy.ndimage import median_filter as ndimage_median

    bands, frames = size
    if bands % 2 == 0 or frames % 2 == 0 or bands < 1 or frames < 1:
        raise AscError(f"median filter size must be two odd positive numbers, not {size}")
    # ndimage's mode='constant' pads with zeros like medfilt2d; a size of 1 on the batch axes keeps
    # the clips apart. It handles float32 directly, where medfilt2d converts to float64.
    footprint = (1,) * (x.ndim - 2) + (bands, frames)
    return x - ndimage_median(x, size=footprint, mode="constant", cval=0.0)


def global_normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray | None = None) -> np.ndarray:
    """GMS (``std`` None: ``x - mean``) or GMSVN (``(x - mean) / std``) with per-band statistics.

    mean, std : np.ndarray [shape=(n_mels,)] from the training split only.
    """
    out = x - np.asarray(mean, dtype=x.dtype)[:, None]
    if std is not None:
        out /= np.maximum(np.asarray(std, dtype=x.dtype), 1e-8)[:, None]
    return out


@dataclass(frozen=True)
class Enhancement:
    """What a trial does to the stored features before the model sees them."""

    normalization: str = "gmsvn"  # paper: GMSVN, or GMS whenever mean subtraction or the median filter is on
    mean_subtraction: bool = False  # paper section 3.1
    median_filter: tuple[int, int] | None = None  # paper section 3.2: (7, 21)

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise AscError(f"normalization must be one of {NORMALIZATIONS}, not {self.normalization!r}")
        if self.median_filter is not None:
            object.__setattr__(self, "median_filter", tuple(self.median_filter))
            b, f = self.median_filter
            if b % 2 == 0 or f % 2 == 0 or b < 1 or f < 1:
                raise AscError(f"median_filter must be two odd positive sizes, not {self.median_filter}")

    @property
    def cache_key(self) -> str | None:
        """Name of the store-derived cache for the expensive part (the median filter), or None."""
        if self.median_filter is None:
            return None
        return f"{self.normalization}-medfilt{self.median_filter[0]}x{self.median_filter[1]}"

    def normalize(self, x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        if self.normalization == "none":
            return x.astype(np.float32, copy=True)
        return global_normalize(x.astype(np.float32, copy=False), mean, std if self.normalization == "gmsvn" else None)

    def __call__(self, x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """Normalise, then mean-subtract and / or median-filter, as the paper's loader does."""
        out = self.normalize(x, mean, std)
        if self.median_filter is not None:
            out = median_filter(out, self.median_filter)
        if self.mean_subtraction:
            out = mean_subtraction(out)
        return out


@dataclass(frozen=True)
class CachedMedianFilter:
    """Picklable transform for a store's derived cache: normalise, then median-filter."""

    enhancement: Enhancement
    mean: tuple
    std: tuple

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.enhancement.normalize(x, np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32))
        return median_filter(out, self.enhancement.median_filter)
