"""Scene probabilities from audio files: a trained model carried with everything it needs.

A :class:`Member` is one trained network together with how its input was made: the feature
configuration of its store, the store's spectrum-correction coefficients (if any), the normalisation
statistics it trained with and its enhancement. :class:`Ensemble` averages members' probabilities
with weights (the paper's late fusion). Both compute features from the audio exactly as the store and
the training loader did (``asc.features.log_mels``, ``Enhancement``, the median-filter cache's storage
type), so that a model predicts from audio what it predicted from the store.

A member is saved as one ``torch.save`` file (:meth:`Member.save`); :func:`member_from_checkpoint`
makes one from a training run's ``best.pt`` and its store.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from asc import REFERENCE_DEVICE
from asc.dataset import _natural_key
from asc.enhance import Enhancement
from asc.errors import AscError
from asc.features import FeatureConfig, check_finite, load_audio, log_mels
from asc.models import ModelConfig, build_model

MEMBER_FORMAT = 1
# What a member imports to predict (this module: torch, numpy, scipy, librosa, soundfile; an MSXception
# network also pretrainedmodels, which imports torchvision): training records their versions with the
# network, so that a logged model pins the versions it was trained with.
MEMBER_PACKAGES = ("torch", "numpy", "scipy", "librosa", "soundfile", "torchvision", "pretrainedmodels")


@functools.lru_cache(maxsize=1)
def installed_versions() -> dict[str, str]:
    """The installed version of each of :data:`MEMBER_PACKAGES` that is installed here."""
    found = {}
    for name in MEMBER_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found
_DEVICE_SUFFIX = re.compile(r"-([a-z0-9]+)\.wav$", re.IGNORECASE)


@dataclass
class Member:
    """One trained network and the recipe for its input (see the module docstring)."""

    state: dict  # the network's state dict
    model_config: ModelConfig
    classes: list[str]
    features: FeatureConfig
    enhancement: Enhancement
    mean: np.ndarray  # normalisation statistics per Mel band (the clips it trained on)
    std: np.ndarray
    corrections: dict[str, np.ndarray] | None = None  # spectrum correction per device, or None
    source: dict = dataclasses.field(default_factory=dict)  # where it came from (run id, trial, store)
    frames: int | None = None  # the clips' length in frames it trained on (None: a member of an older version)
    # MEMBER_PACKAGES' versions it trained with ({}: a member of an older version, which recorded none)
    packages: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self._model = None
        self._feature_key = None

    def to_dict(self) -> dict:
        return {"format": MEMBER_FORMAT, "model": self.state, "model_config": dataclasses.asdict(self.model_config),
                "classes": list(self.classes), "features": self.features.to_dict(),
                "enhancement": dataclasses.asdict(self.enhancement), "mean": np.asarray(self.mean, np.float32),
                "std": np.asarray(self.std, np.float32),
                "corrections": None if self.corrections is None else {d: np.asarray(c, np.float32)
                                                                      for d, c in self.corrections.items()},
                "source": self.source, "frames": self.frames, "packages": dict(self.packages)}

    def save(self, path: str | Path) -> Path:
        torch.save(self.to_dict(), str(path))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Member":
        try:
            d = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:  # torch raises several types for a truncated or foreign file
            raise AscError(f"{path}: not a readable model member ({type(exc).__name__})") from None
        if not isinstance(d, dict) or d.get("format") != MEMBER_FORMAT:
            raise AscError(f"{path}: not a model member of this project (format {MEMBER_FORMAT})")
        features = FeatureConfig(**d["features"])
        return cls(state=d["model"], model_config=ModelConfig(**d["model_config"]), classes=list(d["classes"]),
                   features=features, enhancement=Enhancement.from_dict(d["enhancement"]), mean=np.asarray(d["mean"]),
                   std=np.asarray(d["std"]), corrections=d["corrections"], source=d.get("source", {}),
                   frames=d.get("frames"), packages=d.get("packages") or {})

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            model = build_model(dataclasses.replace(self.model_config, pretrained=False))  # weights: the state
            model.load_state_dict(self.state)
            self._model = model.eval()
        return self._model

    @property
    def feature_key(self) -> tuple:
        """Members with equal keys see equal log-Mel features (computed once for all of them): the same
        feature configuration and, for spectrum-corrected members, the same coefficients."""
        if self._feature_key is None:
            corrections = None if self.corrections is None else hashlib.sha256(b"".join(
                device.encode() + np.asarray(c, np.float32).tobytes()
                for device, c in sorted(self.corrections.items()))).hexdigest()[:12]
            self._feature_key = (self.features.key(), corrections)
        return self._feature_key

    def correction(self, device: str | None, path=None) -> np.ndarray | None:
        """The spectrum-correction coefficients of a clip's device: None for a member without spectrum
        correction, and for a device the training pairs held none of (a device unseen in training:
        scored uncorrected, which :meth:`Ensemble.member_probabilities` notes). A clip whose device is
        unknown (``audio/0.wav``, as the leaderboard and evaluation sets name them) is refused: its
        correction cannot be chosen, and skipping it silently would score it as device A."""
        if self.corrections is None:
            return None
        if device is None:
            who = f"member {self.source['trial']}" if self.source.get("trial") else "a member"
            raise AscError(f"{path}: its recording device is unknown (no '-<device>.wav' in the name), and the "
                           f"model's {who} corrects each device's spectrum; give the device with predict --device "
                           "(or a 'device' column)")
        return self.corrections.get(device.lower())

    def enhance(self, x: np.ndarray) -> np.ndarray:
        """Stored features ``[clips, n_mels, frames]`` -> what the network saw in training: the
        enhancement's every-batch stages (training-only augmentations do nothing here), the median
        filter's output in the type its cache stored (``asc.enhance``)."""
        return self.enhancement(x, self.mean.astype(np.float32), self.std.astype(np.float32),
                                cache_dtype=self.features.dtype)

    @torch.no_grad()
    def probabilities(self, x: np.ndarray, device: torch.device, batch_size: int = 64) -> np.ndarray:
        """Class probabilities for stored features ``x`` (as :meth:`asc.train.predict` computes them)."""
        model = self.model.to(device)
        out = [torch.softmax(model(torch.from_numpy(np.ascontiguousarray(self.enhance(x[i:i + batch_size])))
                                   .to(device)).float(), dim=-1).cpu().numpy()
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


def clip_device(path: str | Path) -> str | None:
    """The recording device in a DCASE file name (``...-b.wav`` -> ``b``), or None (``0.wav``)."""
    match = _DEVICE_SUFFIX.search(Path(path).name)
    return match.group(1).lower() if match else None


class Ensemble:
    """Members whose probabilities are averaged with weights; one member is a single model."""

    def __init__(self, members: Sequence[Member], weights: Sequence[float] | None = None):
        if not members:
            raise AscError("an ensemble needs at least one member")
        classes = members[0].classes
        for m in members[1:]:
            if m.classes != classes:
                raise AscError(f"ensemble members disagree on the classes: {classes} and {m.classes}")
        self.members = list(members)
        w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(members),) or (w < 0).any() or w.sum() <= 0:
            raise AscError(f"ensemble weights must be {len(members)} non-negative numbers, not all zero")
        self.weights = w / w.sum()
        self.classes = list(classes)
        self.notes: list[str] = []  # what the last prediction did that a user should know

    def member_probabilities(self, paths: Sequence[str | Path], devices: Sequence[str | None] | None = None,
                             chunk: int = 64, progress: Callable[[int], None] | None = None,
                             device: str | torch.device | None = None) -> list[np.ndarray]:
        """Each member's probabilities ``[len(paths), classes]`` for audio files.

        ``devices``: each clip's recording device (for spectrum correction; default: from the file
        name). The audio is read once per clip and every distinct feature configuration is
        computed once, from one STFT per STFT setting. A clip that cannot be read, or whose length
        differs from the first clip's, is an AscError naming it."""
        torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        devices = [clip_device(p) for p in paths] if devices is None else list(devices)
        self.notes = []
        corrected = [m for m in self.members if m.corrections is not None]
        # a device without coefficients, or with the identity a store gives a device it had no training
        # pairs of (the reference device's identity is its correction)
        table = corrected[0].corrections if corrected else {}
        uncorrectable = sorted({d for d in devices if d and corrected and d.lower() != REFERENCE_DEVICE and (
            d.lower() not in table or np.all(np.asarray(table[d.lower()]) == 1))})
        if uncorrectable:
            self.notes.append(f"{sum(d in uncorrectable for d in devices)} clip(s) of devices the spectrum correction "
                              f"has no coefficients for ({', '.join(uncorrectable)}: unseen in training) were "
                              "scored uncorrected by the spectrum-corrected member(s)")
        out: list[list[np.ndarray]] = [[] for _ in self.members]
        frames: dict[tuple, int] = {}
        for start in range(0, len(paths), chunk):
            batch = list(range(start, min(start + chunk, len(paths))))
            features = self._features([paths[i] for i in batch], [devices[i] for i in batch], frames)
            for k, member in enumerate(self.members):
                out[k].append(member.probabilities(features[member.feature_key], torch_device))
            if progress:
                progress(len(batch))
        return [np.concatenate(p) if p else np.zeros((0, len(self.classes)), np.float32) for p in out]

    def _features(self, paths, devices, frames: dict) -> dict[tuple, np.ndarray]:
        """``{feature key: [clips, n_mels, frames]}`` for the distinct feature configurations."""
        by_key = {m.feature_key: m for m in self.members}
        rates = {m.features.sample_rate for m in by_key.values()}
        per_key: dict[tuple, list] = {key: [] for key in by_key}
        for path, device in zip(paths, devices):
            audio = {rate: None for rate in rates}
            for key, member in by_key.items():
                config = member.features
                if audio[config.sample_rate] is None:
                    audio[config.sample_rate] = load_audio(  # the model's store refused other rates too
                        path, config.sample_rate, config.resample, f"resample it to {config.sample_rate} Hz first")
                y = audio[config.sample_rate]  # load_audio refuses NaN and infinite samples
                if len(y) < config.n_fft:  # before librosa warns about it: the length is the culprit
                    trained = member.frames or frames.get(key)
                    raise AscError(f"{path}: {len(y) / config.sample_rate:.2f} s is shorter than one STFT window "
                                   f"({config.n_fft} samples)" + (f"; the model was trained on clips of "
                                                                 f"{config.clip_seconds(trained)} ({trained} frames): "
                                                                 "every clip must have that length" if trained else ""))
                x = check_finite(log_mels(y, [config], member.correction(device, path))[0], y, path, config)
                trained = member.frames or frames.setdefault(key, x.shape[-1])
                if x.shape[-1] != trained:
                    raise AscError(f"{path}: {len(y) / config.sample_rate:.2f} s gives {x.shape[-1]} frames; the "
                                   f"model was trained on clips of {config.clip_seconds(trained)} ({trained} frames): "
                                   "every clip must have that length")
                per_key[key].append(x)
        return {key: np.stack(xs) for key, xs in per_key.items()}

    def predict(self, paths: Sequence[str | Path], devices=None, **kwargs) -> np.ndarray:
        """The weighted average of the members' probabilities for audio files."""
        probs = self.member_probabilities(paths, devices, **kwargs)
        return np.tensordot(self.weights, np.stack(probs).astype(np.float64), axes=1)


def member_from_checkpoint(best_file: str | Path, source: dict | None = None) -> Member:
    """A :class:`Member` from a training run's ``best.pt`` and the store it names."""
    from asc.store import MANIFEST, read_manifest  # late: pyarrow; a served model imports this module, reads no store

    best = torch.load(str(best_file), map_location="cpu", weights_only=False)
    if "norm_mean" not in best:
        raise AscError(f"{best_file}: a checkpoint without its normalisation statistics (written before they were "
                       "saved with it); train it again")
    store = Path(best["store"])
    if not (store / MANIFEST).is_file():
        raise AscError(f"{best_file}: its feature store {store} is gone; the model needs its feature configuration")
    manifest = read_manifest(store / MANIFEST)
    features = FeatureConfig(**manifest["config"])
    corrections = None
    if features.spectrum_correction:
        table = np.load(store / "_correction.npy")
        corrections = {d.lower(): table[i] for i, d in enumerate(manifest["dataset"]["devices"])}
    mean, std = best["norm_mean"], best["norm_std"]
    if mean is None:  # normalization "none": no statistics needed
        mean = std = np.zeros(features.n_mels, np.float32)
    return Member(state=best["model"], model_config=ModelConfig(**best["model_config"]), classes=list(best["classes"]),
                  features=features, enhancement=Enhancement.from_dict(best["enhancement"]), mean=np.asarray(mean, np.float32),
                  std=np.asarray(std, np.float32), corrections=corrections,
                  source={"store": str(store), "epoch": best["epoch"], **(source or {})},
                  frames=int(manifest["shape"][1]), packages=best.get("packages") or {})


def audio_paths(items: str | Path | Sequence[str | Path]) -> list[str]:
    """Audio files from paths and folders: a folder gives its ``.wav`` files (recursively, in natural
    order: ``2.wav`` before ``10.wav``). A path that does not exist is an AscError naming it."""
    if isinstance(items, (str, Path)):
        items = [items]
    out: list[str] = []
    for item in items:
        path = Path(str(item))
        if path.is_dir():
            found = sorted((str(p) for p in path.rglob("*") if p.suffix.lower() == ".wav" and p.is_file()),
                           key=_natural_key)
            if not found:
                raise AscError(f"{path}: no .wav files in this folder")
            out.extend(found)
        elif path.is_file():
            out.append(str(path))
        else:
            raise AscError(f"{path}: no such audio file or folder")
    if not out:
        raise AscError("no audio files given")
    return out
