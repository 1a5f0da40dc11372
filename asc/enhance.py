"""Feature enhancements: one definition each, and the pure functions that apply them.

An enhancement is one :class:`Definition` in :data:`ENHANCEMENTS`: its name, its settings (type,
default, allowed values: the search space's schema is derived from them, as ``<name>_<setting>``
parameters that exist only when the enhancement is on), the stage it acts at, the function that
applies it, and its one label. A configuration composes any of them (``enhancement:
mean_subtraction+freq_mixstyle``); they apply in the order :data:`ENHANCEMENTS` lists them, which is
also the order of the stages (:data:`STAGES`):

- ``store``: computed into the feature store when it is built (spectrum correction: a store of its own);
- ``features``: training only, on a training clip's stored features before normalisation (DIR: a
  microphone's response, on device-A clips);
- global normalisation (GMS or GMSVN with the training statistics), always;
- ``batch``: every batch, in training, evaluation and the served model alike (median filter, mean
  subtraction); a ``cached`` one is computed once per setting into the store's derived caches where
  that is cheaper (the median filter on a CPU), or per batch on the training device;
- ``input``: training only, on the model's input batch (Freq-MixStyle).

Adding an enhancement is: a :class:`Definition` in :data:`ENHANCEMENTS` (its place in the dict is
its place in the order) with its ``apply`` function (numpy or torch alike for a ``batch`` step,
which :meth:`Enhancement.after_median` runs and every path of a batch ends in, the served model's in
``asc.inference`` included; torch for an ``input`` step, which :meth:`Enhancement.on_input` runs; a
``cached`` step also ``apply_torch``, its torch twin, which a GPU trial runs per batch instead of
reading the cache); and its tests (tests/test_enhance.py holds those every enhancement must pass,
served-equals-trained included). A ``features`` step gives ``prepare`` (what it needs of the store's
feature settings, once), ``draw`` (its picks for an epoch's clips, from the epoch's generator) and
``apply`` (the picks on the stored features); ``asc.train`` runs them (``Training.run_epoch`` draws,
``FeatureView.batch`` applies). A setting that must fit the spectrogram says so (``at_most``), one
that names something to read gives its reader (``read``): the search space checks them. Nothing
else changes: :class:`Enhancement` gets a field of its name, the search space its parameters, the
tables and run names its label.

The functions take ``x : np.ndarray [shape=(..., n_mels, frames)]`` (one clip or a batch) and return a
new array of the same shape; the input is never changed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from asc.errors import AscError

NORMALIZATIONS = ("none", "gms", "gmsvn")
STAGES = ("store", "features", "batch", "input")


@dataclass(frozen=True)
class Setting:
    """One setting of an enhancement: its space parameter is ``<enhancement>_<name>``."""

    name: str
    kind: type  # int, float or str
    default: Any
    low: float | None = None  # smallest allowed value
    low_open: bool = False  # low itself not allowed
    high: float | None = None  # largest allowed value (included)
    odd: bool = False  # median-filter sizes
    help: str = ""
    path: bool = False  # a file or folder (other than the default): a search resolves it where it is read
    # the spectrogram's size it must fit within: "n_mels" (its height) or "frames" (its width); a search
    # checks it against its Mel-band counts when read and against its stores' frames before it starts
    at_most: str | None = None
    # a setting that names something to read (a folder of responses): read(value, sample_rate) reads and
    # checks it (an AscError naming what is wrong), which a search does before anything runs
    read: Callable | None = None

    def check(self, value, enhancement: str):
        """``value`` as this setting's kind, within its bounds; else an AscError naming it."""
        what = f"{enhancement} {self.name}"
        try:
            if self.kind is int:
                if isinstance(value, bool) or float(value) != int(value):
                    raise ValueError
                value = int(value)
            elif self.kind is float:
                if isinstance(value, bool) or not np.isfinite(float(value)):
                    raise ValueError
                value = float(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise AscError(f"{what} must be {'an integer' if self.kind is int else 'a number'}, not {value!r}") \
                from None
        if self.odd and (value % 2 == 0 or (self.low is not None and value < self.low)):
            raise AscError(f"{what} must be an odd integer{f' >= {self.low:g}' if self.low is not None else ''}, "
                           f"not {value!r}")
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise AscError(f"{what} must be {'>' if self.low_open else '>='} {self.low:g}, not {value!r}")
        if self.high is not None and value > self.high:
            raise AscError(f"{what} must be <= {self.high:g}, not {value!r}")
        return value


@dataclass(frozen=True)
class Definition:
    """One enhancement (see the module docstring)."""

    name: str
    short: str  # its label in tables and run names
    stage: str  # one of STAGES
    settings: tuple[Setting, ...] = ()
    help: str = ""
    # batch: apply(x, **settings), numpy or torch; input: apply(x, rng, **settings), torch, its random draws
    # from rng (the epoch's generator: a resumed run draws them again); features: apply(x, picks, state),
    # x a training clip's stored features, picks what draw picked for each (>= 0); store: None
    apply: Callable | None = None
    # features: prepare(feature_config, **settings) -> state, once per view of a store (DIR: each
    # response's gain per Mel band); draw(rng, stream, is_reference, state, **settings) -> per clip of
    # the stream (indices into the view) a pick or -1, once per epoch, before the loader starts
    prepare: Callable | None = None
    draw: Callable | None = None
    # batch: computed once per setting into the store's derived cache on a CPU; on a GPU per batch, by
    # apply_torch(x, **settings), the step's torch twin (asc.train.FeatureView.finish), which a cached
    # step must give
    cached: bool = False
    apply_torch: Callable | None = None
    # normalization "auto" is GMS (the mean removed, no variance scaling) when a step with this on is
    # part of the configuration, else GMSVN: the paper's rule for mean subtraction and the median filter
    auto_gms: bool = False
    # its settings in its label, when not named one by one (``7x21``: the median filter's window)
    settings_label: Callable | None = None

    def key(self, setting: str) -> str:
        return f"{self.name}_{setting}"

    def check(self, values) -> tuple:
        """A configuration's values of these settings, in their order, each of its kind and within its
        bounds; else an AscError naming the enhancement, the setting and the value."""
        values = tuple(values)
        if len(values) != len(self.settings):
            raise AscError(f"{self.name} takes {len(self.settings)} settings "
                           f"({', '.join(s.name for s in self.settings)}), not {values!r}")
        return tuple(s.check(v, self.name) for s, v in zip(self.settings, values))

    def label(self, values: dict) -> str:
        """``medfilt7x21``, ``fms p=0.4 alpha=0.3``: the short name and the settings' values, named in
        full (a trial's label also says ``a=`` for mixup's alpha)."""
        if self.settings_label is not None:
            return f"{self.short}{self.settings_label(values)}"
        parts = [f"{s.name}={_fmt(values[s.name])}" for s in self.settings
                 if s.kind is not str or values[s.name] != s.default]
        return " ".join([self.short, *parts])


def _fmt(v) -> str:
    return f"{v:.2g}" if isinstance(v, float) else str(v)


# Each definition's functions, named (a Definition pickles with them), calling the functions below
def _dir_read(responses: str, sample_rate: int):
    from asc.responses import read_responses  # late: librosa and soundfile, for a trial with DIR only

    return read_responses(responses, sample_rate)


def _dir_prepare(config, p: float, responses: str) -> np.ndarray:
    from asc.responses import gains_for  # late: librosa and soundfile, for a trial with DIR only

    return gains_for(responses, config)  # [responses, n_mels]


def dir_draws(rng: np.random.Generator, stream: np.ndarray, is_reference: np.ndarray, gains: np.ndarray,
              p: float, responses: str = "") -> np.ndarray:
    """DIR's draw for the clips of ``stream`` (indices into the view): per clip the impulse response
    added to its features, or -1. Only device A's clips (``is_reference``), each with probability p:
    the other devices' clips are already recorded through another microphone."""
    return np.where((rng.random(len(stream)) < p) & is_reference[stream], rng.integers(len(gains), size=len(stream)), -1)


def _dir_apply(x: np.ndarray, picks: np.ndarray, gains: np.ndarray) -> np.ndarray:
    return x + gains[picks][:, :, None]  # a response's gain per band, on every frame (log-Mel: a sum)


def _median_filter_step(x, bands: int, frames: int):
    return median_filter(x, (bands, frames))


def _median_filter_torch_step(x, bands: int, frames: int):
    return median_filter_torch(x, (bands, frames))


def _window_label(values: dict) -> str:
    return f"{values['bands']}x{values['frames']}"


def _mean_subtraction_step(x):
    return mean_subtraction(x)


def _freq_mixstyle_step(x, rng, p: float, alpha: float):
    return freq_mixstyle(x, p, alpha, rng)


ENHANCEMENTS: dict[str, Definition] = {d.name: d for d in (
    Definition("spectrum_correction", "spec-corr", "store",
               help="per-device STFT coefficients from parallel A/device pairs (DCASE2019 Task 1B winner)"),
    Definition("dir", "dir", "features", (
        Setting("p", float, 0.4, low=0.0, high=1.0, help="share of device-A training clips given a response"),
        Setting("responses", str, "micirp", path=True, read=_dir_read,
                help="a folder of impulse responses, or micirp: the 66 shipped")),
        help="device impulse responses (Morocutti et al. 2023): a real microphone's response on device-A clips",
        apply=_dir_apply, prepare=_dir_prepare, draw=dir_draws),
    Definition("median_filter", "medfilt", "batch", (
        Setting("bands", int, 7, low=1, odd=True, at_most="n_mels", help="height (Mel bands); paper 7"),
        Setting("frames", int, 21, low=1, odd=True, at_most="frames", help="width (frames); paper 21")),
        help="x - median(x) over (bands, frames) (paper section 3.2)",
        apply=_median_filter_step, cached=True, apply_torch=_median_filter_torch_step, auto_gms=True,
        settings_label=_window_label),
    Definition("mean_subtraction", "mean-sub", "batch", help="each band's mean over time removed (paper section 3.1)",
               apply=_mean_subtraction_step, auto_gms=True),
    Definition("freq_mixstyle", "fms", "input", (
        Setting("p", float, 0.4, low=0.0, high=1.0, help="probability a batch is mixed; 0.4 (2023), 0.6 (2022)"),
        Setting("alpha", float, 0.4, low=0.0, low_open=True, help="Beta(alpha, alpha) mixing; 0.4 (2023), 0.3 (2022)")),
        help="Freq-MixStyle (Schmid et al. 2022): per-band statistics mixed with a batch partner's",
        apply=_freq_mixstyle_step),
)}
# The enhancements a trial switches on (spectrum correction is a store's): the fields of Enhancement.
_ON_FEATURES = {n: d for n, d in ENHANCEMENTS.items() if d.stage != "store"}


def parse_composition(text: str) -> tuple[str, ...]:
    """``"median_filter+freq_mixstyle"`` -> the enhancements, in their order; ``"none"`` -> ().
    An unknown name, one named twice or names out of their order is an AscError naming it."""
    if not isinstance(text, str) or not text.strip():
        raise AscError(f"an enhancement is a name or names joined by '+', not {text!r}")
    if text.strip() == "none":
        return ()
    names = [n.strip() for n in text.split("+")]
    for n in names:
        if not n:
            raise AscError(f"{text!r}: an empty name between or beside the '+'")
        if n == "none":
            raise AscError(f"{text!r}: none is no enhancement and joins no other")
        if n not in ENHANCEMENTS:
            raise AscError(f"{n!r} is not one of none, {', '.join(ENHANCEMENTS)} (or several of them joined by '+')")
    if len(set(names)) != len(names):
        raise AscError(f"{text!r} names an enhancement twice")
    ordered = tuple(n for n in ENHANCEMENTS if n in names)
    if tuple(names) != ordered:  # written in an order they cannot run in: say the one they run in
        raise AscError(f"{text!r}: enhancements run in one order ({', '.join(ENHANCEMENTS)}); "
                       f"write {'+'.join(ordered)}")
    return ordered


def auto_normalization(names) -> str:
    """What ``normalization: auto`` is for the enhancements ``names``: GMS with a step whose definition
    says so (``auto_gms``), else GMSVN."""
    return "gms" if any(ENHANCEMENTS[n].auto_gms for n in names) else "gmsvn"


def composition(names) -> str:
    """The canonical name of a composition: its enhancements in their order, or ``none``."""
    names = set(names)
    return "+".join(n for n in ENHANCEMENTS if n in names) or "none"


def setting_keys() -> dict[str, tuple[Definition, Setting]]:
    """Every enhancement setting's space parameter -> (its enhancement, the setting)."""
    return {d.key(s.name): (d, s) for d in ENHANCEMENTS.values() for s in d.settings}


def mean_subtraction(x: np.ndarray) -> np.ndarray:
    """Spectrogram-wise mean subtraction (the paper's eq. 5): remove each band's mean over time.

    A device's response adds a constant per band in the log-Mel domain (eq. 4); this removes it,
    together with the clip's own long-term spectrum.
    """
    return x - x.mean(-1, keepdims=True)  # numpy or torch alike (a batch on the training device)


def median_filter(x: np.ndarray, size: tuple[int, int] = (7, 21)) -> np.ndarray:
    """``x - medfilt(x, size)``: keep what changes faster than a (bands, frames) median follows.

    Equal to ``x - scipy.signal.medfilt2d(x, size)`` for every clip: zero-padded edges, odd sizes.
    The paper uses (7 Mel bands, 21 frames).
    """
    # late: scipy.ndimage; a trial's worker imports this module (through its Space) and needs it only
    # for a median filter on the CPU
    from scipy.ndimage import median_filter as ndimage_median

    bands, frames = size
    if bands % 2 == 0 or frames % 2 == 0 or bands < 1 or frames < 1:
        raise AscError(f"median filter size must be two odd positive numbers, not {size}")
    # ndimage's mode='constant' pads with zeros like medfilt2d; a size of 1 on the batch axes keeps
    # the clips apart. It handles float32 directly, where medfilt2d converts to float64.
    footprint = (1,) * (x.ndim - 2) + (bands, frames)
    return x - ndimage_median(x, size=footprint, mode="constant", cval=0.0)


def median_filter_torch(x, size: tuple[int, int] = (7, 21), max_elements: int = 1 << 27):
    """:func:`median_filter` in torch, batched on ``x``'s device (a GPU: cheap; the CPU pays about what
    scipy does): ``x - median`` over (bands, frames) windows, zero-padded edges, for ``x``
    ``[clips, n_mels, frames]``. Equal to :func:`median_filter` (a median picks one of the window's
    values; the sizes are odd). The windows are unfolded a few clips at a time, within
    ``max_elements`` values."""
    import torch  # late: the median-filter cache's workers (asc.parallel, Ray) import this module without it
    import torch.nn.functional as F

    bands, frames = size
    if bands % 2 == 0 or frames % 2 == 0 or bands < 1 or frames < 1:
        raise AscError(f"median filter size must be two odd positive numbers, not {size}")
    n, height, width = x.shape
    step = max(1, max_elements // max(1, height * width * bands * frames))
    out = []
    for start in range(0, n, step):
        part = F.pad(x[start:start + step], (frames // 2, frames // 2, bands // 2, bands // 2))
        windows = part.unfold(1, bands, 1).unfold(2, frames, 1)  # [clips, n_mels, frames, bands, frames]
        out.append(windows.reshape(*windows.shape[:3], -1).median(dim=-1).values)
    return x - torch.cat(out)


def global_normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray | None = None) -> np.ndarray:
    """GMS (``std`` None: ``x - mean``) or GMSVN (``(x - mean) / std``) with per-band statistics.

    mean, std : np.ndarray [shape=(n_mels,)] from the training split only.
    """
    out = x - np.asarray(mean, dtype=x.dtype)[:, None]
    if std is not None:
        out /= np.maximum(np.asarray(std, dtype=x.dtype), 1e-8)[:, None]
    return out


class _Enhancement:
    """The methods of :class:`Enhancement`, whose fields are made from the definitions below it."""

    normalization: str

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise AscError(f"normalization must be one of {NORMALIZATIONS}, not {self.normalization!r}")
        for name, d in _ON_FEATURES.items():  # each field checked by its definition
            value = getattr(self, name)
            if not d.settings:
                object.__setattr__(self, name, bool(value))
            elif value is not None:
                object.__setattr__(self, name, d.check(value))

    # ---- as a composition of definitions ------------------------------------------------------------
    @classmethod
    def compose(cls, names, values: dict, normalization: str = "gmsvn") -> "Enhancement":
        """From enhancement names and their settings' values (``{"median_filter_bands": 7, ...}``,
        defaults for those missing). A ``store`` step among the names (spectrum correction) is the
        store's, not this composition's: left out."""
        names = set(names)
        fields = {}
        for name, d in _ON_FEATURES.items():
            if not d.settings:
                fields[name] = name in names
            elif name in names:
                fields[name] = tuple(values.get(d.key(s.name), s.default) for s in d.settings)
        return cls(normalization=normalization, **fields)

    @property
    def names(self) -> tuple[str, ...]:
        """The enhancements that are on, in their order (spectrum correction is the store's)."""
        return tuple(n for n in _ON_FEATURES if getattr(self, n) not in (None, False))

    def settings(self, name: str) -> dict:
        """An enhancement's settings by name (``{"bands": 7, "frames": 21}``)."""
        value = getattr(self, name, None) if ENHANCEMENTS[name].settings else None
        return dict(zip((s.name for s in ENHANCEMENTS[name].settings), value or ()))

    def label(self, spectrum_correction: bool = False) -> str:
        """The one label of this composition: ``plain``, ``mean-sub``, ``medfilt7x21+fms p=0.4 alpha=0.4``."""
        names = (("spectrum_correction",) if spectrum_correction else ()) + self.names
        return "+".join(ENHANCEMENTS[n].label(self.settings(n) if ENHANCEMENTS[n].settings else {})
                        for n in ENHANCEMENTS if n in names) or "plain"

    @classmethod
    def label_of(cls, names, values: dict) -> str:
        """The one label of the enhancements ``names`` with their settings' ``values`` (defaults for
        those missing), the store's (spectrum correction) included: ``spec-corr+medfilt5x21``."""
        names = tuple(names)
        return cls.compose(names, values).label("spectrum_correction" in names)

    @property
    def cache_key(self) -> str | None:
        """Name of the store-derived cache of the ``cached`` steps (``gmsvn-medfilt7x21``), or None."""
        steps = [d.label(settings) for d, settings in self.steps("batch", cached=True)]
        return f"{self.normalization}-{'+'.join(steps)}" if steps else None

    def normalize(self, x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        if self.normalization == "none":
            return x.astype(np.float32, copy=True)
        return global_normalize(x.astype(np.float32, copy=False), mean, std if self.normalization == "gmsvn" else None)

    def __call__(self, x: np.ndarray, mean: np.ndarray, std: np.ndarray, cache_dtype: str | None = None) -> np.ndarray:
        """The stages every batch goes through (training, evaluation, the served model): normalise,
        then median-filter and / or mean-subtract, as the paper's loader does. ``cache_dtype``: the
        median filter's output rounded to the type its cache stores (what a trial read from it)."""
        out = self.normalize(x, mean, std)
        if self.cache_key is not None:
            out = self.cached(out)
            if cache_dtype is not None:
                out = out.astype(cache_dtype).astype(np.float32)
        return self.after_median(out)

    def cached(self, x: np.ndarray) -> np.ndarray:
        """The ``cached`` batch steps (the median filter) on normalised features, in their order: what
        the store's derived cache holds."""
        for d, settings in self.steps("batch", cached=True):
            x = d.apply(x, **settings)
        return x

    def steps(self, stage: str, cached: bool | None = None) -> list[tuple[Definition, dict]]:
        """The enhancements that are on at ``stage`` (those ``cached`` or not, where given), in their
        order, each with its settings."""
        return [(ENHANCEMENTS[n], self.settings(n)) for n in self.names if ENHANCEMENTS[n].stage == stage
                and (cached is None or ENHANCEMENTS[n].cached == cached)]

    def after_median(self, x):
        """The ``batch`` steps after the cached one (the median filter), in their order (mean
        subtraction), on a numpy array or a torch tensor. :meth:`__call__`, a trial reading the median
        filter's cache and a trial filtering on its device (``asc.train.FeatureView``) all end here, so
        a step defined as ``batch`` is trained and served alike."""
        for d, settings in self.steps("batch", cached=False):
            x = d.apply(x, **settings)
        return x

    def on_input(self, x, rng: np.random.Generator):
        """The ``input`` steps (Freq-MixStyle) on a training batch, in their order, each drawing from ``rng``."""
        for d, settings in self.steps("input"):
            x = d.apply(x, rng, **settings)
        return x

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Enhancement":
        """From :meth:`to_dict` (also a checkpoint's or member's from before the newer fields)."""
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


# A class made rather than written so that an enhancement is its definition alone: its switch here is
# the field of its name, a bool without settings, else the tuple of its settings' values or None (off),
# keyword-only (``Enhancement("gms", median_filter=(7, 21))``), checked by the definition.
Enhancement = dataclasses.make_dataclass(
    "Enhancement",
    [("normalization", str, dataclasses.field(default="gmsvn"))]  # GMSVN; GMS with mean subtraction / median filter
    + [(name, tuple | None if d.settings else bool, dataclasses.field(default=None if d.settings else False,
                                                                       kw_only=True))
       for name, d in _ON_FEATURES.items()],
    bases=(_Enhancement,), frozen=True)
Enhancement.__module__ = __name__  # where pickle (Ray's configs, a checkpoint) finds it
Enhancement.__doc__ = """What a trial does to the stored features before the model sees them: the normalisation
and the composed enhancements' settings (None or False: off), one field per definition of
:data:`ENHANCEMENTS` but spectrum correction, which is the store's (``FeatureConfig``)."""


@dataclass(frozen=True)
class CachedMedianFilter:
    """Picklable transform for a store's derived cache: normalise, then median-filter."""

    enhancement: Enhancement
    mean: tuple
    std: tuple

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.enhancement.normalize(x, np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32))
        return self.enhancement.cached(out)


def freq_mixstyle(x, p: float, alpha: float, rng: np.random.Generator, eps: float = 1e-6):
    """Freq-MixStyle (Schmid et al., DCASE 2022): with probability ``p`` the batch ``x`` (torch,
    [batch, n_mels, frames]) is normalised by each clip's per-band mean and standard deviation over
    time (detached from the gradient) and re-scaled with statistics mixed with a shuffled partner's,
    lambda ~ Beta(alpha, alpha) per clip. Draws come from ``rng`` (one number, then the lambdas and the
    permutation when it mixes), so a run resumed at an epoch draws what it drew."""
    import torch  # late: as in median_filter_torch

    if rng.random() > p:
        return x
    n = x.shape[0]
    lam = torch.as_tensor(rng.beta(alpha, alpha, size=(n, 1, 1)), dtype=x.dtype, device=x.device)
    perm = torch.as_tensor(rng.permutation(n), device=x.device)
    mu = x.mean(dim=-1, keepdim=True).detach()
    sig = (x.var(dim=-1, keepdim=True) + eps).sqrt().detach()
    mixed_mu = lam * mu + (1 - lam) * mu[perm]
    mixed_sig = lam * sig + (1 - lam) * sig[perm]
    return (x - mu) / sig * mixed_sig + mixed_mu
