"""``search run SPACE --warm-start EXPERIMENT [...]``: what earlier searches trained, told to the new one.

MLflow is where an earlier search's trials are (nothing else of it needs to survive). An experiment
can warm-start a search when its trials were compared on the same terms: the same objective, the same
protocol (the same clips chose their epochs) and the same number of seeds; anything else is one line
before the search starts. Each of its finished trial runs is then taken when its configuration lies
in the new space and it read the store the new search would read for it (its ``store_name`` tag, the
store's identity: feature settings and audio), and skipped otherwise, with the reason counted.

A taken trial enters the new search's Optuna study as what it was (COMPLETE with its objective,
PRUNED with its per-epoch values when ASHA stopped it, FAIL when it diverged), tagged
``warm_start_from`` with its run id, and the searcher knows its configuration: the new search trains
none of them again (``search.searcher``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from asc.dataset import VALIDATION_SHARE
from asc.errors import AscError
from search.searcher import KEY_ATTR, WARM_ATTR
from search.space import PARAMS, Space
from search.tracking import ROLE_TAG, SELECTED_ON_TAG, STORE_TAG, selected_on, sqlite_file, where_hint


@dataclass
class WarmTrial:
    run_id: str
    experiment: str
    params: dict  # canonical, in the new space's terms (a points space: with its point id)
    key: str
    state: str  # "complete", "pruned" or "diverged"
    value: float | None
    intermediate: dict  # epoch -> objective


def _parse(key: str, text: str):
    """An MLflow param (a string) back into the parameter's type."""
    kind = PARAMS[key].kind
    if text in ("None", ""):
        return None
    if kind is bool:
        return text == "True"
    return kind(float(text)) if kind is int else kind(text)


def contains(space: Space, params: dict) -> bool:
    """Whether the configuration ``params`` (canonical) is one this space can propose: each searched
    value one the space can draw (a choice counts by what it trains: ``auto`` may be ``gms``), and the
    rest what the space fixes."""
    if space.sampler == "points":
        return any(space.config_key({**space.fixed, **p}) == space.config_key(params) for _, p in space.points)
    for key, dist in space.searched.items():
        if key not in params:  # a setting of an enhancement that is off
            continue
        value = params[key]
        if dist.kind == "choice":
            if not any(space.canonical({**space.fixed, **params, key: v}).get(key) == value for v in dist.values):
                return False
        elif not dist.low <= value <= dist.high:
            return False
    proposal = {**space.fixed, **{k: params[k] for k in space.searched if k in params}}
    return space.config_key(proposal) == space.config_key(params)


def check_warm_start_store(uri: str, names: list[str]) -> None:
    """A local MLflow database that is not there holds no earlier search: one line, before MLflow
    would create an empty one."""
    if sqlite_file(uri) is not None and not sqlite_file(uri).is_file():
        raise AscError(f"--warm-start {' '.join(names)}: no MLflow database at {sqlite_file(uri)} "
                       f"({where_hint(uri, 'the earlier search')})")


def warm_start_experiments(uri: str, names: list[str], space: Space) -> list:
    """The experiments ``names``, each checked to have compared its trials as this search will (objective,
    protocol, held-out share, seeds): what needs no feature store, so it is checked before any is built."""
    client = MlflowClient(uri)
    found = []
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            known = [e.name for e in client.search_experiments(max_results=50) if e.name != "Default"]
            raise AscError(f"--warm-start {name}: no such experiment in MLflow at {uri} (there: {', '.join(known) or 'none'})")
        tags = exp.tags
        for what, theirs, ours in (("objective", tags.get("objective"), space.objective.label()),
                                   ("protocol", tags.get("protocol"), space.protocol),
                                   # a search made before the share was a setting held out the default
                                   ("validation_share", tags.get("validation_share", f"{VALIDATION_SHARE:g}")
                                    if space.protocol == "validation" else None,
                                    f"{space.validation_share:g}" if space.protocol == "validation" else None),
                                   ("seeds", tags.get("seeds"), str(space.seeds))):
            if theirs != ours:
                raise AscError(f"--warm-start {name}: its trials were compared by {what} {theirs or '(not recorded)'}, "
                               f"this search by {ours}: their results do not carry over")
        found.append(exp)
    return found


def check_warm_start_stores(names: list[str], experiments: list, store_names: dict[str, str]) -> None:
    """Refuse an earlier search none of whose feature stores this search reads (``store_names``:
    feature-config key -> store name, of the stores there or of those ``--data`` is about to build)."""
    for name, exp in zip(names, experiments):
        theirs = json.loads(exp.tags.get("store_names") or "{}")
        if not set(theirs.values()) & set(store_names.values()):
            raise AscError(f"--warm-start {name}: its trials read other feature stores "
                           f"({', '.join(sorted(theirs.values())) or 'not recorded'}) than this search "
                           f"({', '.join(sorted(store_names.values()))}): other audio or feature settings")


def read_warm_start(uri: str, names: list[str], space: Space, store_names: dict[str, str],
                    experiments: list | None = None) -> tuple[list[WarmTrial], str]:
    """The trials the experiments ``names`` give the search, and one line saying what was taken and
    skipped. ``experiments``: theirs, as :func:`warm_start_experiments` found and checked them."""
    client = MlflowClient(uri)
    taken: dict[str, WarmTrial] = {}
    skipped: Counter = Counter()
    states: Counter = Counter()
    experiments = experiments or warm_start_experiments(uri, names, space)
    check_warm_start_stores(names, experiments, store_names)
    for name, exp in zip(names, experiments):
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.{ROLE_TAG} = 'trial'", max_results=10000)
        for run in sorted(runs, key=lambda r: r.info.start_time):
            t = run.data.tags
            diverged = t.get("diverged_at_epoch")
            if run.info.status != "FINISHED" and not (run.info.status == "FAILED" and diverged):
                skipped["unfinished or failed"] += 1
                continue
            try:
                params = {k: _parse(k, v) for k, v in run.data.params.items() if k in PARAMS}
            except ValueError:
                skipped["unreadable parameters"] += 1
                continue
            canonical = space.canonical(params)
            if not contains(space, canonical):
                skipped["outside this space"] += 1
                continue
            if t.get(STORE_TAG) != store_names.get(space.feature_config(canonical).key()):
                skipped["another store"] += 1
                continue
            if t.get(SELECTED_ON_TAG, selected_on(space.protocol)) != selected_on(space.protocol):
                skipped["another protocol"] += 1
                continue
            key = space.config_key(canonical)
            if key in taken:
                skipped["a configuration taken already"] += 1
                continue
            if space.sampler == "points":
                canonical["point"] = next(pid for pid, p in space.points
                                          if space.config_key({**space.fixed, **p}) == key)
            history = {int(m.step): m.value for m in client.get_metric_history(run.info.run_id, "objective")}
            value = run.data.metrics.get("objective")
            state = ("diverged" if diverged else "pruned" if t.get("stopped_early") == "true" else "complete")
            if state == "complete" and (value is None or not math.isfinite(value)):
                skipped["no objective recorded"] += 1
                continue
            taken[key] = WarmTrial(run.info.run_id, name, canonical, key, state, value, history)
            states[state] += 1
    line = (f"warm start from {', '.join(repr(n) for n in names)}: {len(taken)} trial(s) taken"
            + (f" ({', '.join(f'{n} {s}' for s, n in states.items())})" if taken else "")
            + (f"; {sum(skipped.values())} skipped ({', '.join(f'{n} {why}' for why, n in skipped.items())})"
               if skipped else "") + "; none of them is trained again")
    return list(taken.values()), line


def apply(searcher, trials: list[WarmTrial]) -> None:
    """Add the taken trials to the searcher's study and make it know their configurations."""
    space = searcher.space
    for w in trials:
        state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "diverged": TrialState.FAIL}[w.state]
        searcher._ot_study.add_trial(optuna.trial.create_trial(
            params=space.optuna_params(w.params), distributions=space.optuna_distributions(w.params),
            value=w.value if state == TrialState.COMPLETE else None, state=state,
            intermediate_values={k: v for k, v in w.intermediate.items() if math.isfinite(v)},
            user_attrs={WARM_ATTR: w.run_id, KEY_ATTR: w.key, "params": w.params, "warm_start_experiment": w.experiment}))
        searcher.know(w.key, {"trial": w.run_id, "state": w.state, "value": w.value, "intermediate": w.intermediate,
                              "params": w.params})
