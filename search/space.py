"""Search spaces as data: ``spaces/*.yaml`` -> a validated :class:`Space` -> Optuna define-by-run.

The schema is documented in ``spaces/README.md``. Everything is checked before Ray starts; a mistake
is one :class:`AscError` line naming the file and the key (``spaces/x.yaml: params.lr: ...``).

A trial's parameters are a flat dict of the keys in :data:`PARAMS`; :meth:`Space.train_config` turns
one into the ``asc.train.TrainConfig`` the trial runs, and :meth:`Space.feature_config` names the
feature store it reads.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from asc.dataset import VALIDATION_SHARE
from asc.enhance import ENHANCEMENTS, Enhancement, auto_normalization, composition, parse_composition, setting_keys
from asc.errors import AscError
from asc.features import FeatureConfig
from asc.metrics import SELECTION_METRICS
from asc.systems import SYSTEMS, selection_metric
from search.objectives import OBJECTIVES, Objective

NORMALIZATIONS = ("auto", "none", "gms", "gmsvn")
MODELS = ("cnn", "msxception")
SAMPLERS = ("tpe", "random", "grid", "nsga2", "points")
SCHEDULERS = ("asha", "none")


@dataclass(frozen=True)
class Param:
    """What a parameter may be: its type, an allowed set or a lower bound, and its default."""

    kind: type  # int, float, bool or str
    default: Any
    choices: tuple | None = None  # allowed values (strings)
    low: float | None = None  # smallest allowed value
    low_open: bool = False  # low itself not allowed
    high: float | None = None  # largest allowed value
    high_open: bool = True  # high itself not allowed
    odd: bool = False  # median-filter sizes: odd only
    help: str = ""
    # a file or folder: a relative one is made absolute where the space is read, since every trial
    # runs in its own working directory (Tune's default); the default value (a name) is kept as it is
    path: bool = False


# Every key a space's `params` (or a point) may set, with the paper's default where it has one.
PARAMS: dict[str, Param] = {
    "enhancement": Param(str, "none", help="none, or enhancements joined by '+' (asc.enhance.ENHANCEMENTS): "
                                          "the paper's mean_subtraction, median_filter; spectrum_correction (1B "
                                          "winner); dir, freq_mixstyle (DCASE 2022-2023)"),
    # each enhancement's switch, by its name: on beside those `enhancement` names (searchable on and off
    # on its own: `freq_mixstyle: {choice: [true, false]}`)
    **{name: Param(bool, False, help=f"{name} on, beside the enhancements `enhancement` names")
       for name in ENHANCEMENTS},
    # each enhancement's settings, <enhancement>_<setting>, used only when it is on (from asc.enhance)
    **{key: Param(st.kind, st.default, low=st.low, low_open=st.low_open, high=st.high, high_open=False,
                  odd=st.odd, help=f"{d.name}: {st.help}", path=st.path) for key, (d, st) in setting_keys().items()},
    "normalization": Param(str, "auto", NORMALIZATIONS, help="auto: GMS with mean subtraction / median filter, else GMSVN"),
    "n_mels": Param(int, 128, low=1, help="Mel bands (one store each); paper 128"),
    "mixup_alpha": Param(float, 0.0, low=0.0, help="Beta(alpha, alpha); 0 = no mixup; paper 0.3"),
    "lr": Param(float, 1e-3, low=0.0, low_open=True, help="Adam learning rate; paper 1e-3"),
    "lr_factor": Param(float, 0.5, low=0.0, low_open=True, high=1.0, help="ReduceLROnPlateau factor; paper 0.5"),
    "lr_patience": Param(int, 3, low=0, help="ReduceLROnPlateau patience (epochs); paper 3"),
    "batch_size": Param(int, 32, low=1, help="paper 32"),
    "dropout": Param(float, 0.3, low=0.0, high=1.0, help="before each linear layer; paper's code 0.3"),
    "model": Param(str, "msxception", MODELS, help="msxception (paper, GPU) or cnn (small, CPU)"),
    "pretrained": Param(bool, True, help="ImageNet weights for MSXception (ignored by the cnn)"),
    "weights": Param(str, None, help="ImageNet Xception weights file (default: pretrainedmodels' cache file)",
                     path=True),
    "width": Param(int, 16, low=1, help="small CNN: channels of its first block"),
    "selection": Param(str, "metric_a", SELECTION_METRICS, help="epoch kept by Metric A or B"),
    "protocol": Param(str, "validation", ("paper", "validation"), help="select on held-out train locations or on evaluate"),
    "validation_share": Param(float, VALIDATION_SHARE, low=0.0, low_open=True, high=1.0,
                              help="protocol validation: the share of each scene's training locations held out to "
                                   "select on (more: more B and C clips to choose by, fewer to train on)"),
    "epochs": Param(int, 80, low=1, help="paper 80"),
    "seed": Param(int, 0, low=0, help="training seed"),
    "bf16": Param(bool, False, help="bf16 autocast (GPU)"),
    "channels_last": Param(bool, False, help="channels_last memory format (GPU)"),
    "num_workers": Param(int, 0, low=0, help="DataLoader worker processes per trial"),
}
PER_SEARCH = ("protocol", "validation_share")  # keys a search cannot vary: they decide the clips trials are ranked on
MEDIAN_KEYS = ("median_filter_bands", "median_filter_frames")
CONDITIONAL = {key: d.name for key, (d, _) in setting_keys().items()}  # sampled only when their enhancement is on
# Feature settings every store of a search shares (n_mels and spectrum correction vary per trial).
FEATURE_KEYS = ("sample_rate", "n_fft", "hop_length", "fmin", "fmax", "power", "drop_last_frame", "dtype", "resample",
                "pad_mode")
TOP_KEYS = ("description", "sampler", "objective", "lambda", "num_samples", "max_concurrent", "seed", "seeds",
            "scheduler", "features", "params", "points")
SCHEDULER_KEYS = ("name", "max_t", "grace_period", "reduction_factor", "noise_z")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-3`` is a float as in YAML 1.2 (YAML 1.1 needs ``1.0e-3``, and
    reads ``lr: 1e-3`` or ``--set lr=3e-4`` as a string), and a key given twice in one mapping is an
    error, as YAML 1.2 says (PyYAML keeps the last silently: ``epochs: 3`` then ``epochs: 4`` ran 4)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


@dataclass(frozen=True)
class Dist:
    """A searched parameter: ``choice`` (values), or ``int`` / ``float`` over [low, high]."""

    kind: str  # "choice", "int" or "float"
    values: tuple = ()  # choice
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False

    def suggest(self, trial, name: str):
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list:
        """Every value (for the grid sampler): choices, or an int range with its step."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise AscError("a float range has no grid")

    def grid_values(self) -> list:
        """Every value Optuna can draw: :meth:`grid`, or a float range's steps."""
        if self.kind == "float":
            n = int(round((self.high - self.low) / self.step))
            return [self.low + k * self.step for k in range(n + 1)]
        return self.grid()

    def extremes(self) -> list:
        return list(self.values) if self.kind == "choice" else [self.low, self.high]


@dataclass(frozen=True)
class Scheduler:
    name: str = "asha"  # "asha" or "none" (every trial runs its full epochs)
    max_t: int = 0  # ASHA: the most epochs a trial runs (default: the space's largest epochs)
    # ASHA: epochs every trial gets before it can be stopped (0 in a space: 40% of max_t, the first
    # rung that bench-replay found stops no later winner; earlier rungs rank noise)
    grace_period: int = 0
    reduction_factor: float = 3.0  # ASHA: keep 1 / reduction_factor at each rung
    # ASHA with seeds: stop a trial only when objective + noise_z * its standard error over the seeds is
    # below the rung's cutoff (0: Ray's rule; search.schedulers). None in a space: 0.5 with seeds >= 2
    noise_z: float | None = None


GRACE_SHARE = 0.4  # the default first rung, a share of max_t
NOISE_Z = 0.5  # the default noise_z of a search with seeds >= 2


@dataclass(frozen=True)
class Space:
    path: str
    name: str
    description: str
    sampler: str
    objective: Objective
    num_samples: int
    max_concurrent: int
    seed: int
    scheduler: Scheduler
    features: dict  # FeatureConfig fields shared by every store
    fixed: dict  # key -> value
    searched: dict  # key -> Dist
    points: tuple = ()  # sampler "points": (id, params) pairs, params over `fixed`
    text: str = ""  # the YAML as read (logged with the search)
    seeds: int = 1  # models per trial, trained in lockstep with seeds seed, seed + 1, ... (the mean is what counts)

    # ---- sampling -------------------------------------------------------------------------------
    def suggest(self, trial) -> dict:
        """Optuna define-by-run: sample the searched keys (the median filter's size only when the
        median filter is chosen) and return the fixed ones, so that Tune's config holds them all."""
        if self.sampler == "points":
            point = trial.suggest_categorical("point", [pid for pid, _ in self.points])
            return {k: v for k, v in self.resolve({**self.fixed, **dict(self.points)[point]}).items() if k != "point"}
        values = dict(self.fixed)
        # what a key depends on first: the enhancement before its settings, the model before what it
        # may ignore, pretrained before the weights
        order = sorted(self.searched, key=lambda k: (k in CONDITIONAL or k in MODEL_SETTINGS, k == "weights"))
        for key in order:
            if not _used(key, values):  # Optuna never sees a parameter the configuration does not use
                continue
            values[key] = self.searched[key].suggest(trial, key)
        # what Optuna holds comes back as it drew it, unless resolving changed it: the composition an
        # enhancement's switch (fixed or drawn) joins, normalization auto
        return {k: v for k, v in self.resolve(values).items() if k not in trial.params or trial.params[k] != v}

    def __call__(self, trial) -> dict:  # OptunaSearch takes a callable define-by-run space
        return self.suggest(trial)

    def resolve(self, values: dict) -> dict:
        """Defaults filled in, the enhancement's name canonical (its parts in their order), every
        enhancement setting dropped whose enhancement is not on, ``normalization: auto`` resolved to
        what it trains, and the settings the model ignores at one value (the cnn's ``pretrained`` and
        ``weights``, MSXception's ``width``)."""
        out = {k: values.get(k, p.default) for k, p in PARAMS.items()}
        names = enhancement_names(out)
        out["enhancement"] = composition(names)
        for name in ENHANCEMENTS:  # a switch is part of the composition now
            out.pop(name)
        for key, name in CONDITIONAL.items():
            if name not in names:
                out.pop(key)
        if out["normalization"] == "auto":  # the paper: GMS whenever mean subtraction or the median filter is on
            out["normalization"] = auto_normalization(names)
        # settings the chosen model ignores take one value, so that they do not tell configurations apart
        for key in MODEL_SETTINGS:
            if not _used(key, out):
                out[key] = {"pretrained": False, "weights": None}.get(key, PARAMS[key].default)
        return out

    def grid(self) -> dict:
        """The grid sampler's search space: every searched key's values."""
        return {k: d.grid() for k, d in self.searched.items()}

    # ---- one configuration, one identity ------------------------------------------------------------
    @property
    def protocol(self) -> str:
        """The protocol every trial selects its epoch by (a space cannot search over it)."""
        return self._per_search("protocol")

    @property
    def validation_share(self) -> float:
        """The share of training locations every trial holds out to select on (one per search)."""
        return self._per_search("validation_share")

    def _per_search(self, key: str):
        if self.points:
            return self.resolve({**self.fixed, **self.points[0][1]})[key]
        return self.resolve(self.fixed)[key]

    def canonical(self, params: dict) -> dict:
        """``params`` as the configuration they train: defaults filled in, every parameter the
        configuration does not use dropped (the median filter's size without the median filter), a
        points space's point id kept for the tables. Two parameter sets that train the same thing have
        the same canonical form; it is what a trial, MLflow, the tables and Optuna hold."""
        out = self.resolve(params)
        names = enhancement_names(out)
        for name in ENHANCEMENTS:  # a searched switch, as the composition sets it (the tables' column)
            if name in self.searched:
                out[name] = name in names
        if "point" in params:
            out["point"] = params["point"]
        return out

    def config_key(self, params: dict) -> str:
        """The identity of the configuration ``params`` trains (its canonical parameters, without a
        point's id or settings that change only speed): equal keys, equal training."""
        canonical = {k: v for k, v in self.canonical(params).items() if k not in ("point", "num_workers")}
        return json.dumps(canonical, sort_keys=True, default=str)

    @property
    def shown(self) -> list[str]:
        """The parameters that tell this space's trials apart, as the tables and MLflow's runs view
        show them: the searched ones (a points space: its point id)."""
        return list(self.searched) + (["point"] if self.sampler == "points" else [])

    def optuna_params(self, params: dict) -> dict:
        """What the Optuna trial of the configuration ``params`` holds: the searched parameters it uses
        (a points space: its point id)."""
        if self.sampler == "points":
            return {"point": params["point"]}
        canonical = self.canonical(params)  # what suggest asks Optuna for: the searched keys it uses
        out = {}
        for key in self.searched:
            if key not in canonical or not _used(key, canonical):
                continue
            out[key] = canonical[key]
            choices = self.searched[key].values if self.searched[key].kind == "choice" else None
            if choices is not None and canonical[key] not in choices:
                # a choice that resolves to another value (normalization: auto is gms or gmsvn): the
                # one Optuna's distribution holds that trains the same (the one given, where it does)
                same = [v for v in choices
                        if self.canonical({**self.fixed, **canonical, key: v}).get(key) == canonical[key]]
                out[key] = params[key] if params.get(key) in same else same[0]
        return out

    def optuna_distributions(self, params: dict) -> dict:
        """Optuna's distributions of :meth:`optuna_params` (to add a finished trial to a study)."""
        # late: optuna; a trial's worker imports this module (to unpickle its Space) at every start
        import optuna.distributions as od

        if self.sampler == "points":
            return {"point": od.CategoricalDistribution([pid for pid, _ in self.points])}
        out = {}
        for key in self.optuna_params(params):
            d = self.searched[key]
            if d.kind == "choice":
                out[key] = od.CategoricalDistribution(list(d.values))
            elif d.kind == "int":
                out[key] = od.IntDistribution(int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
            else:
                out[key] = od.FloatDistribution(d.low, d.high, step=d.step, log=d.log)
        return out

    def distinct_points(self) -> list[dict] | None:
        """Every distinct configuration the space holds (canonical, in a fixed order), or None when it
        holds infinitely many (a float range without a step)."""
        if self.sampler == "points":
            candidates = [{**self.fixed, **p, "point": pid} for pid, p in self.points]
        else:
            if any(d.kind == "float" and d.step is None for d in self.searched.values()):
                return None
            free = [k for k in self.searched if k not in CONDITIONAL]
            candidates = []
            for combo in itertools.product(*(self.searched[k].grid_values() for k in free)):
                values = {**self.fixed, **dict(zip(free, combo))}
                names = enhancement_names(values)
                conditional = [k for k in self.searched if CONDITIONAL.get(k) in names]
                for settings in itertools.product(*(self.searched[k].grid_values() for k in conditional)):
                    candidates.append({**values, **dict(zip(conditional, settings))})
        out = {}
        for c in candidates:
            out.setdefault(self.config_key(c), self.canonical(c))
        return list(out.values())

    def weights_files(self) -> set:
        """The ImageNet weights settings (a path, or None: pretrainedmodels' cache file) that a pretrained
        MSXception trial of this space can load: what a search checks before its first trial."""
        def values(key: str, point: dict) -> list:
            if key in point:
                return [point[key]]
            return list(self.searched[key].values) if key in self.searched else [
                self.fixed.get(key, PARAMS[key].default)]

        points = [p for _, p in self.points] if self.sampler == "points" else [{}]
        return {w for p in points if "msxception" in values("model", p) and True in values("pretrained", p)
                for w in values("weights", p)}

    # ---- what a trial runs ----------------------------------------------------------------------
    def feature_config(self, params: dict) -> FeatureConfig:
        p = self.resolve(params)
        return FeatureConfig(n_mels=p["n_mels"], spectrum_correction="spectrum_correction" in enhancement_names(p),
                             **self.features)

    def feature_configs(self) -> list[FeatureConfig]:
        """Every store a trial of this space can ask for (each Mel-band count, with or without correction)."""
        if self.sampler == "points":
            candidates = [self.resolve({**self.fixed, **p}) for _, p in self.points]
        else:
            n_mels = self.searched["n_mels"].grid() if "n_mels" in self.searched else [self.resolve(self.fixed)["n_mels"]]
            enh = self.searched["enhancement"].values if "enhancement" in self.searched else [
                self.resolve(self.fixed)["enhancement"]]
            corrected = _switch_values(self.fixed, self.searched, "spectrum_correction")
            candidates = [{"n_mels": n, "enhancement": e, "spectrum_correction": c}
                          for n in n_mels for e in enh for c in corrected]
        unique = {self.feature_config(c).key(): self.feature_config(c) for c in candidates}
        return sorted(unique.values(), key=lambda c: (c.spectrum_correction, c.n_mels))

    def train_config(self, params: dict, store: str, checkpoint_dir: str | None = None, **runtime):
        # late: torch; bench-replay reads and searches spaces without training (start-up time)
        from asc.models import ModelConfig
        from asc.train import TrainConfig

        p = self.resolve(params)
        names = enhancement_names(p)
        norm = p["normalization"]  # "auto" is resolved
        model = ModelConfig(name=p["model"], pretrained=p["pretrained"],
                            weights=p["weights"], dropout=p["dropout"], width=p["width"])
        return TrainConfig(store=store, model=model,
                           enhancement=Enhancement.compose(names, p, norm),
                           mixup_alpha=p["mixup_alpha"], epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"],
                           lr_factor=p["lr_factor"], lr_patience=p["lr_patience"], selection=p["selection"],
                           protocol=p["protocol"], validation_share=p["validation_share"], seed=p["seed"],
                           bf16=p["bf16"], channels_last=p["channels_last"],
                           num_workers=p["num_workers"], checkpoint_dir=checkpoint_dir, **runtime)

    def max_epochs(self) -> int:
        if "epochs" in self.searched:
            return int(max(self.searched["epochs"].extremes()))
        if self.sampler == "points":
            return max(self.resolve({**self.fixed, **p})["epochs"] for _, p in self.points)
        return self.resolve(self.fixed)["epochs"]

    def check_frames(self, frames: int) -> None:
        """Every enhancement setting that must fit the spectrogram's width (``Setting.at_most``: the
        median filter's) is at most ``frames`` wide; their heights are checked against the Mel-band
        counts when the space is read."""
        for key, (definition, setting) in setting_keys().items():
            if setting.at_most != "frames":
                continue
            if self.points:  # per point: its own value, the fixed one, or the default
                values = [(f"points[{i}].{key}" if key in p else f"params.{key}",
                           self.resolve({**self.fixed, **p}).get(key)) for i, (_, p) in enumerate(self.points)]
            elif definition.name in _enhancements(self.fixed, self.searched):
                values = [(f"params.{key}", v) for v in (self.searched[key].extremes() if key in self.searched else
                                                         [self.resolve({**self.fixed, definition.name: True})[key]])]
            else:
                values = []
            for where, v in values:
                if v is not None and v > frames:
                    raise AscError(f"{self.path}: {where}: {v} is {_too_big(setting, frames)}")

    def describe(self, params: dict) -> str:
        """A short name a person scanning a runs table reads: ``mean-sub a=0.3 128mel``."""
        p = self.resolve(params)
        names = enhancement_names(p)
        enh = Enhancement.label_of(names, p)
        parts = [params["point"]] if "point" in params else []
        parts += [enh, f"a={p['mixup_alpha']:.2g}", f"{p['n_mels']}mel"]
        if "lr" in self.searched:
            parts.append(f"lr={p['lr']:.1e}")
        if p["model"] != "cnn":
            parts.append(p["model"])
        return " ".join(parts)


# --------------------------------------------------------------------------------------------------
# Reading and validating
# --------------------------------------------------------------------------------------------------
def load_space(path: str | Path, overrides: list[str] | tuple = ()) -> Space:
    """Read and validate a space file; ``overrides`` are ``KEY=VALUE`` strings (VALUE in YAML):
    a parameter name sets ``params.KEY``, a dotted key (``scheduler.grace_period``) sets that key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AscError(f"{path}: cannot read the space file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise AscError(f"{path}: not a text file in UTF-8 (byte {exc.start}); a space is a YAML file") from None
    try:
        doc = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise AscError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(doc, dict):
        raise AscError(f"{path}: a space is a YAML mapping with a 'params' key (see spaces/README.md)")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise AscError(f"{path}: --set {item!r}: expected KEY=VALUE (e.g. lr=3e-4, scheduler.grace_period=2)")
        parts = key.split(".")
        if parts[0] not in PARAMS and parts[0] not in TOP_KEYS:
            raise AscError(f"{path}: --set {item!r}: {parts[0]!r} is an unknown parameter (known: {', '.join(PARAMS)}) "
                           f"and no key of a space ({', '.join(TOP_KEYS)})")
        if parts[0] in PARAMS:  # a parameter, or one of its distribution's keys (lr.float=[1e-4, 1e-2])
            parts = ["params", *parts]
        node = doc
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            elif part == "scheduler" and i == 0 and isinstance(node[part], str):
                node[part] = {"name": node[part]}  # `scheduler: asha` takes settings as the mapping form
            if not isinstance(node[part], dict):
                raise AscError(f"{path}: --set {item!r}: {'.'.join(parts[:i + 1])} is {node[part]!r}, not a mapping")
            node = node[part]
        try:
            node[parts[-1]] = yaml.load(value, Loader=_Loader)
        except yaml.YAMLError as exc:
            raise AscError(f"{path}: --set {item!r}: the value is not valid YAML "
                           f"({getattr(exc, 'problem', None) or exc})") from None
    if overrides:  # the space as run: what the search logs and what `resume` reads back
        text = (f"# {path} with --set {' --set '.join(overrides)}\n"
                + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
    return parse_space(doc, str(path), text)


def parse_space(doc: dict, path: str = "<space>", text: str = "") -> Space:
    def fail(key: str, message: str):
        raise AscError(f"{path}: {key}: {message}")

    unknown = [k for k in doc if k not in TOP_KEYS]
    if unknown:
        fail(unknown[0], f"unknown key (known: {', '.join(TOP_KEYS)})")
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        fail("params", "a mapping of parameter -> value or distribution")
    fixed, searched = {}, {}
    for key, spec in params.items():
        if key not in PARAMS:
            fail(f"params.{key}", f"unknown parameter (known: {', '.join(PARAMS)})")
        if isinstance(spec, dict):
            searched[key] = _dist(spec, PARAMS[key], f"params.{key}", fail)
        else:
            fixed[key] = _value(spec, PARAMS[key], f"params.{key}", fail)

    sampler = doc.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        fail("sampler", f"{sampler!r} is not one of {', '.join(SAMPLERS)}")
    points: list = []
    if sampler == "points":
        points = _points(doc.get("points"), fixed, searched, fail)
    elif doc.get("points") is not None:
        fail("points", "only the 'points' sampler runs fixed points")
    if sampler == "grid":
        for key, dist in searched.items():
            if dist.kind == "float":
                fail(f"params.{key}", "the grid sampler needs a choice or an int range, not a float range")

    _check_conditional(fixed, searched, points, fail)
    # Trials compared on different clips (held-out training locations or the evaluation split, more or
    # fewer locations) cannot be ranked against each other: one protocol and one share per search.
    for key in PER_SEARCH:
        if key in searched:
            fail(f"params.{key}", f"one {key} per search: trials selected on different clips cannot be ranked "
                 f"against each other (run one search per {key})")
        values = {p.get(key, fixed.get(key, PARAMS[key].default)) for _, p in points}
        if len(values) > 1:
            fail("points", f"one {key} per search, not {' and '.join(sorted(map(str, values)))}: trials selected on "
                 "different clips cannot be ranked against each other")
    share = next(iter({p.get("validation_share", fixed.get("validation_share", VALIDATION_SHARE)) for _, p in points}
                      or {fixed.get("validation_share", VALIDATION_SHARE)}))
    if share != VALIDATION_SHARE and "spectrum_correction" in _enhancements(fixed, searched, points):
        fail("params.validation_share", f"{share:g} with spectrum_correction: its stores are fitted without the "
             f"locations of validation_share {VALIDATION_SHARE:g} (`prepare`), and would have seen some of these")

    objective_spec = doc.get("objective", "metric_b")
    if objective_spec not in OBJECTIVES:
        fail("objective", f"{objective_spec!r} is not one of {', '.join(OBJECTIVES)}")
    gap_lambda = doc.get("lambda")
    if objective_spec == "gap_penalized":
        if isinstance(gap_lambda, bool) or not isinstance(gap_lambda, (int, float)) or not 0 <= gap_lambda < math.inf:
            fail("lambda", f"gap_penalized needs lambda, a number >= 0 (metric_b - lambda * |gap|), not {gap_lambda!r}")
    elif gap_lambda is not None:
        fail("lambda", f"only the gap_penalized objective uses lambda, not {objective_spec}")
    objective = Objective(objective_spec, float(gap_lambda) if gap_lambda is not None else None)

    # ASHA by default, except where it cannot run: fixed points, a Pareto pair (single-objective)
    scheduler = _scheduler(doc.get("scheduler", "none" if sampler == "points" or objective.multi else "asha"), fail)
    if objective.multi and scheduler.name == "asha":
        fail("scheduler", "ASHA is single-objective and cannot stop trials on a Pareto pair: use scheduler: none")

    features = doc.get("features") or {}
    if not isinstance(features, dict):
        fail("features", "a mapping of feature settings")
    for key in features:
        if key not in FEATURE_KEYS:
            fail(f"features.{key}", f"unknown feature setting (known: {', '.join(FEATURE_KEYS)}; n_mels and "
                 "spectrum correction are params)")
    try:
        FeatureConfig(**features)
    except (AscError, TypeError) as exc:
        fail("features", str(exc))
    _check_resources(fixed, searched, points, features, fail)

    ints = {}
    for key, default, low in (("num_samples", len(points) if points else 10, 1), ("max_concurrent", 2, 1),
                              ("seed", 0, 0), ("seeds", 1, 1)):
        value = doc.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            fail(key, f"an integer >= {low}, not {value!r}")
        ints[key] = value
    description = doc.get("description", "")
    space = Space(path=path, name=Path(path).stem, description=str(description), sampler=sampler, objective=objective,
                  scheduler=scheduler, features=dict(features), fixed=fixed, searched=searched, points=tuple(points),
                  text=text, **ints)
    max_epochs = space.max_epochs()
    if scheduler.name == "asha":
        max_t = scheduler.max_t or max_epochs
        if max_t < max_epochs:
            fail("scheduler.max_t", f"{max_t} is below the space's largest epochs ({max_epochs}): ASHA would stop "
                 "every trial before its end")
        grace = scheduler.grace_period or max(1, round(GRACE_SHARE * max_t))
        if grace > max_t:
            fail("scheduler.grace_period", f"{scheduler.grace_period} is above max_t ({max_t})")
        noise_z = scheduler.noise_z if scheduler.noise_z is not None else NOISE_Z if space.seeds > 1 else 0.0
        space = dataclasses.replace(space, scheduler=dataclasses.replace(scheduler, max_t=max_t, grace_period=grace,
                                                                         noise_z=noise_z))
    return space


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _value(value, param: Param, key: str, fail):
    if param.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if param.kind is str and param.default is None and value is None:
        return None
    if not isinstance(value, param.kind) or (param.kind is int and isinstance(value, bool)):
        fail(key, f"expected {_KIND_NAMES[param.kind]}, not {value!r}")
    if param.choices is not None and value not in param.choices:
        fail(key, f"{value!r} is not one of {', '.join(map(str, param.choices))}")
    if param.path and value != param.default:
        value = str(Path(value).expanduser().resolve())
    if param is PARAMS["enhancement"]:  # a composition: its parts known, in their order
        try:
            value = composition(parse_composition(value))
        except AscError as exc:
            fail(key, str(exc))
    if param.kind in (int, float):
        if isinstance(value, float) and not math.isfinite(value):
            fail(key, f"{value!r} is not a finite number")
        if param.low is not None and (value < param.low or (param.low_open and value == param.low)):
            fail(key, f"{value!r} must be {'>' if param.low_open else '>='} {param.low:g}")
        if param.high is not None and (value > param.high or (param.high_open and value == param.high)):
            fail(key, f"{value!r} must be {'<' if param.high_open else '<='} {param.high:g}")
        if param.odd and value % 2 == 0:
            fail(key, f"{value!r} is even: a median filter's size is odd (paper: 7 bands x 21 frames)")
    return value


DIST_KEYS = {"choice": ("choice",), "int": ("int", "step", "log"), "float": ("float", "step", "log")}


def _dist(spec: dict, param: Param, key: str, fail) -> Dist:
    kinds = [k for k in DIST_KEYS if k in spec]
    if len(kinds) != 1:
        fail(key, "a distribution has exactly one of choice: [...], int: [low, high], float: [low, high]")
    kind = kinds[0]
    extra = [k for k in spec if k not in DIST_KEYS[kind]]
    if extra:
        fail(f"{key}.{extra[0]}", f"unknown key for a {kind} distribution (known: {', '.join(DIST_KEYS[kind])})")
    if kind == "choice":
        values = spec["choice"]
        if not isinstance(values, list) or not values:
            fail(f"{key}.choice", "a non-empty list of values")
        values = [_value(v, param, f"{key}.choice", fail) for v in values]
        if len(set(map(repr, values))) != len(values):
            fail(f"{key}.choice", "lists a value twice")
        return Dist("choice", values=tuple(values))
    if param.kind is not (int if kind == "int" else float) and not (param.kind is float and kind == "int"):
        fail(key, f"{'an integer' if param.kind is int else 'this'} parameter cannot take "
             f"{'an int' if kind == 'int' else 'a float'} range"
             + (" (use int)" if param.kind is int else " (use choice)"))
    bounds = spec[kind]
    if (not isinstance(bounds, list) or len(bounds) != 2
            or any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in bounds)):
        fail(f"{key}.{kind}", "expected [low, high], two numbers")
    if kind == "int" and any(b != int(b) for b in bounds):
        fail(f"{key}.int", f"expected [low, high], two integers, not {bounds}")
    low, high = (_value(int(b) if kind == "int" else float(b), dataclasses.replace(param, kind=int if kind == "int" else float),
                        f"{key}.{kind}", fail) for b in bounds)
    if not low < high:
        fail(f"{key}.{kind}", f"low {low} must be below high {high}")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        fail(f"{key}.log", "true or false")
    if log and low <= 0:
        fail(f"{key}.log", f"a log range needs low > 0, not {low}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 or (kind == "int" and step != int(step)):
            fail(f"{key}.step", f"a positive {'integer' if kind == 'int' else 'number'}, not {step!r}")
        if log:
            fail(f"{key}.step", "a log range takes no step")
        steps = (high - low) / step
        if abs(steps - round(steps)) > 1e-9 * max(1.0, steps):  # Optuna would lower high without a word
            fail(f"{key}.step", f"{step:g} does not divide the range [{low:g}, {high:g}], whose bounds are both "
                                f"values to try: make high {low + math.floor(steps) * step:g} or "
                                f"{low + math.ceil(steps) * step:g}")
    if param.odd and (step is None or step % 2):
        fail(f"{key}.step", "an odd size needs an even step (e.g. int: [3, 11], step: 2), else even sizes come up")
    return Dist(kind, low=low, high=high, step=step, log=log)


def _points(points, fixed: dict, searched: dict, fail) -> list:
    """``points``: a list of system ids (the paper's A1-A7, B1-B7, and SC) or mappings of params (with an ``id``)."""
    if not isinstance(points, list) or not points:
        fail("points", "the points sampler needs a non-empty list of systems (A1..B7, SC) or parameter mappings")
    if searched:
        fail(f"params.{next(iter(searched))}", "the points sampler runs fixed points: params must be fixed values")
    out = []
    for i, point in enumerate(points):
        if isinstance(point, str):
            system = SYSTEMS.get(point.upper())
            if system is None:
                fail(f"points[{i}]", f"unknown system {point!r} (systems: {', '.join(SYSTEMS)})")
            params = {"pretrained": system.pretrained, "normalization": system.normalization,
                      "enhancement": system.composition(), "mixup_alpha": system.mixup_alpha,
                      "selection": selection_metric(point)}
            enhancement = system.enhancement
            for name in enhancement.names:  # each enhancement's settings, as the space names them
                params.update({ENHANCEMENTS[name].key(k): v for k, v in enhancement.settings(name).items()})
            out.append((point.upper(), params))
        elif isinstance(point, dict):
            pid = point.get("id", f"p{i}")
            params = {}
            for key, value in point.items():
                if key == "id":
                    continue
                if key not in PARAMS:
                    fail(f"points[{i}].{key}", f"unknown parameter (known: {', '.join(PARAMS)})")
                params[key] = _value(value, PARAMS[key], f"points[{i}].{key}", fail)
            out.append((str(pid), params))
        else:
            fail(f"points[{i}]", "a paper system id or a mapping of parameters")
    ids = [pid for pid, _ in out]
    if len(set(ids)) != len(ids):
        fail("points", "two points share an id")
    return out


MODEL_SETTINGS = ("pretrained", "weights", "width")  # used by one model only (resolve fixes them otherwise)


def _used(key: str, values: dict) -> bool:
    """Whether a configuration with ``values`` (so far) uses parameter ``key``: an enhancement's setting
    only with the enhancement on, ImageNet weights only by a pretrained MSXception, width only by the cnn."""
    def get(k):
        return values.get(k, PARAMS[k].default)
    if key in CONDITIONAL:
        return CONDITIONAL[key] in enhancement_names(values)
    if key in ("pretrained", "weights") and get("model") != "msxception":
        return False
    if key == "weights" and not get("pretrained"):
        return False
    return not (key == "width" and get("model") == "msxception")


def enhancement_names(values: dict) -> tuple[str, ...]:
    """The enhancements a parameter set turns on, in their order (``asc.enhance``): those its
    ``enhancement`` names and those whose switch is on."""
    names = set(parse_composition(values.get("enhancement", PARAMS["enhancement"].default)))
    return tuple(n for n in ENHANCEMENTS if n in names or values.get(n) is True)


def _switch_values(fixed: dict, searched: dict, name: str) -> list:
    """The values an enhancement's switch takes in a (non-points) space."""
    return list(searched[name].values) if name in searched else [fixed.get(name, PARAMS[name].default)]


def _enhancements(fixed: dict, searched: dict, points: list = ()) -> set:
    """Every enhancement a trial of the space can run: of its points, else of its choices."""
    if points:
        return {n for _, p in points for n in enhancement_names({**fixed, **p})}
    values = list(searched["enhancement"].values) if "enhancement" in searched else [
        fixed.get("enhancement", PARAMS["enhancement"].default)]
    return {n for v in values for n in parse_composition(v)} | {
        n for n in ENHANCEMENTS if True in _switch_values(fixed, searched, n)}


def _check_conditional(fixed: dict, searched: dict, points: list, fail) -> None:
    """Every enhancement setting belongs to an enhancement the space can run; the median filter fits."""
    def get(p: dict, key: str):
        return p.get(key, fixed.get(key, PARAMS[key].default))

    enh = _enhancements(fixed, searched, points)
    for key, name in CONDITIONAL.items():
        if (key in fixed or key in searched) and name not in enh:
            fail(f"params.{key}", f"set, but no enhancement here is {name}")
        for i, (_, p) in enumerate(points):
            if key in p and name not in enhancement_names({**fixed, **p}):
                fail(f"points[{i}].{key}", f"set, but this point's enhancement is not {name}")
    # A height (the median filter's: given, or the default) must fit the smallest Mel-band count it can meet.
    for key, (definition, setting) in setting_keys().items():
        if setting.at_most != "n_mels":
            continue
        if points:
            for i, (_, p) in enumerate(points):
                v, n = get(p, key), get(p, "n_mels")
                if definition.name in enhancement_names({**fixed, **p}) and v > n:
                    fail((f"points[{i}]." if key in p else "params.") + key, f"{v} is {_too_big(setting, n)}")
        elif definition.name in enh:
            n_mels = min(searched["n_mels"].extremes() if "n_mels" in searched else [get({}, "n_mels")])
            v = max(searched[key].extremes() if key in searched else [get({}, key)])
            if v > n_mels:
                fail(f"params.{key}", f"{v} is {_too_big(setting, n_mels)}")


def _too_big(setting, size: int) -> str:
    """What a setting larger than the spectrogram's dimension it must fit (``Setting.at_most``) is."""
    return (f"taller than the spectrogram ({size} Mel bands)" if setting.at_most == "n_mels" else
            f"wider than the spectrogram ({size} frames)")


def _check_resources(fixed: dict, searched: dict, points: list, features: dict, fail) -> None:
    """What an enhancement setting names and reads (``Setting.read``: DIR's response folders) is read
    and checked before anything runs: every value the space gives it, else its default where the
    enhancement can run."""
    rate = features.get("sample_rate", FeatureConfig().sample_rate)
    enh = _enhancements(fixed, searched, points)
    for key, (definition, setting) in setting_keys().items():
        if setting.read is None:
            continue
        values = ([(f"points[{i}].{key}", p[key]) for i, (_, p) in enumerate(points) if key in p]
                  + ([(f"params.{key}", fixed[key])] if key in fixed else [])
                  + [(f"params.{key}.choice", v) for v in (searched[key].values if key in searched else ())])
        if definition.name in enh and not values:
            values = [(f"params.{key}", PARAMS[key].default)]
        for where, spec in values:
            try:
                setting.read(spec, rate)
            except AscError as exc:
                fail(where, str(exc))


def _scheduler(spec, fail) -> Scheduler:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        fail("scheduler", "asha, none, or a mapping with name, max_t, grace_period, reduction_factor")
    for key in spec:
        if key not in SCHEDULER_KEYS:
            fail(f"scheduler.{key}", f"unknown key (known: {', '.join(SCHEDULER_KEYS)})")
    name = spec.get("name", "asha")
    if name not in SCHEDULERS:
        fail("scheduler.name", f"{name!r} is not one of {', '.join(SCHEDULERS)}")
    if name == "none" and len(spec) > 1:
        fail(f"scheduler.{next(k for k in spec if k != 'name')}", "only ASHA takes settings")
    values = {}
    for key, low in (("max_t", 1), ("grace_period", 1)):
        if key in spec:
            v = spec[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                fail(f"scheduler.{key}", f"an integer >= {low} (epochs), not {v!r}")
            values[key] = v
    if "reduction_factor" in spec:
        v = spec["reduction_factor"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 1:
            fail("scheduler.reduction_factor", f"a number > 1, not {v!r}")
        values["reduction_factor"] = float(v)
    if "noise_z" in spec:
        v = spec["noise_z"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
            fail("scheduler.noise_z", f"a number >= 0 (standard errors of the benefit of the doubt), not {v!r}")
        values["noise_z"] = float(v)
    return Scheduler(name=name, **values)
