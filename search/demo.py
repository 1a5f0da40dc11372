"""``python -m search demo``: the whole loop on the embedded defaults, from nothing.

1. the synthetic multi-device set (the real dataset's layout: devices A, B, C, parallel recordings);
2. its feature stores (log-Mel, and the spectrum-corrected one the space may ask for), by Ray tasks;
3. a search (``spaces/demo.yaml``: Optuna TPE + ASHA over the enhancements, mixup and the learning
   rate, the small CNN) on local Ray, every trial recorded in a local MLflow store;
4. fusion of its trials by Metric B on the selection clips, registered in MLflow's model registry;
5. the fused model's predictions for the evaluation split, from the audio, as a submission file.

Everything lives under ``--workdir``. Run again, each step finds its work done and says so (a search
whose driver was stopped is resumed); delete the folder to start over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from asc.cli import COUNT, MAX_FUSION_SIZE, add_synth_arguments, integer
from asc.errors import AscError

# The steps import their libraries (Ray, MLflow, Optuna, torch, scipy) when they run: `python -m search`
# imports this module for the demo's options at every start.

REPO = Path(__file__).resolve().parents[1]
DEMO_SPACE = REPO / "spaces" / "demo.yaml"
SEARCH_NAME = "demo"
MODEL_NAME = "asc-demo-fusion"


def _from_here() -> str:
    """What a printed ``python -m search`` command needs in front to run where the user is: nothing in
    the repository's folder (or with it on the path), else the repository on PYTHONPATH."""
    here = Path.cwd().resolve()
    if here == REPO or str(REPO) in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        return ""
    return f"PYTHONPATH={REPO} "


def _step(n: int, text: str) -> None:
    print(f"\n[{n}/5] {text}", flush=True)


def _search(space_path: Path, store: Path, storage: Path, overrides: list[str], uri: str):
    """Run the demo's search, resume it, or find it done; returns (experiment id, best-trials table)."""
    from mlflow.tracking import MlflowClient  # late, as the module says

    from search.tracking import artifact_text
    from search.tuner import SEARCH_FILE, SearchSettings, resume_search, run_search

    if (storage / SEARCH_NAME / SEARCH_FILE).is_file():
        info = json.loads((storage / SEARCH_NAME / SEARCH_FILE).read_text())
        client = MlflowClient(uri)
        parent = client.get_run(info["parent_run_id"])
        if parent.info.status == "FINISHED":
            print(f"      search {SEARCH_NAME!r} in {storage / SEARCH_NAME} has finished: reusing its trials "
                  "(delete the folder to search again)")
            table = artifact_text(client, parent.info.run_id, "best_trials.txt").rstrip()
            return info["experiment_id"], table
        print(f"      search {SEARCH_NAME!r} in {storage / SEARCH_NAME} did not finish: resuming it")
        result = resume_search(SEARCH_NAME, storage=str(storage), mlflow_uri=uri,
                               instead=f"run the demo in another --workdir than {storage.parent}")
    else:
        settings = SearchSettings(space=str(space_path), store=str(store), name=SEARCH_NAME, storage=str(storage), mlflow_uri=uri,
                                  overrides=overrides, top=5)
        result = run_search(settings, command=f"python -m search demo (spaces/{space_path.name})")
    table = artifact_text(MlflowClient(uri), result["parent_run_id"], "best_trials.txt").rstrip()
    return result["experiment_id"], table


def _fusion(uri: str, experiment_id: str, size: int):
    """Fuse the search's trials by Metric B, or find the fusion done; returns (model URI, table)."""
    from mlflow.tracking import MlflowClient  # late, as the module says

    from search.fuse import format_result, fuse
    from search.tracking import MODEL_TAG, ROLE_TAG, artifact_text

    client = MlflowClient(uri)
    # the demo's own fusion (registered under MODEL_NAME), not one a user ran by hand on the same search
    own = (f"tags.{ROLE_TAG} = 'fusion' and attributes.status = 'FINISHED' "
           f"and tags.registered_model LIKE 'models:/{MODEL_NAME}/%'")
    done = client.search_runs([experiment_id], filter_string=own, order_by=["attributes.start_time DESC"], max_results=1)
    if done and done[0].data.tags.get(MODEL_TAG):
        run = done[0]
        print(f"      fusion run {run.info.run_id} exists: reusing it and its model "
              f"{run.data.tags.get('registered_model', run.data.tags[MODEL_TAG])}")
        table = artifact_text(client, run.info.run_id, "fusion.txt").rstrip()
        return run.data.tags.get("registered_model", run.data.tags[MODEL_TAG]), table, True
    result = fuse(SEARCH_NAME, uri, by="metric_b", size=size, register=MODEL_NAME)  # fuse's default method
    return result.registered or result.model_uri, format_result(result), False


OPTIONS_FILE = "demo.json"  # what the work in a workdir was made with
OWN_STORE = "WORKDIR/runs/mlflow.db"  # the tracking URI recorded when the demo keeps its own MLflow store


def _made_with(args, space, uri: str) -> dict:
    """What the demo's work depends on, as the options and space keys a user sets: the set's options,
    the tracking store its runs are in, the search space as the options resolved it (``--epochs 6``
    and demo.yaml's own 6 are one thing), the fusion's size."""
    made = {f"--{k.replace('_', '-')}": getattr(args, k)
            for k in ("segments_per_scene", "parallel_per_scene", "seconds", "seed", "fusion_size")}
    made["--mlflow-uri"] = _store_label(uri, args.workdir.resolve() / "runs")
    made.update(space.fixed)
    made.update({k: repr(d) for k, d in space.searched.items()})
    made.update({k: getattr(space, k) for k in ("sampler", "num_samples", "max_concurrent", "seeds")})
    made.update({f"scheduler.{k}": v for k, v in dataclasses.asdict(space.scheduler).items()})
    return json.loads(json.dumps(made, default=str))  # as it reads back from the file


def _store_label(uri: str, storage: Path) -> str:
    """A tracking URI as demo.json records it: the demo's own store by name (the workdir may move)."""
    from search.tracking import default_uri  # late, as the module says

    return OWN_STORE if uri == default_uri(storage) else uri


def _recorded_store(workdir: Path) -> str | None:
    """The tracking URI the workdir's search recorded, as :func:`_made_with` writes it (None: no search yet)."""
    from search.tuner import SEARCH_FILE  # late, as the module says

    storage = workdir / "runs"
    try:
        return _store_label(json.loads((storage / SEARCH_NAME / SEARCH_FILE).read_text())["mlflow_uri"], storage)
    except (OSError, ValueError, KeyError):
        return None


def _same_options(workdir: Path, made: dict) -> None:
    """A rerun reuses the workdir's set, search and fusion: refuse (one line) options that would have
    made other work, instead of showing the old results as theirs. Recorded at the first run."""
    record = workdir / OPTIONS_FILE
    if not record.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        if not any(workdir.iterdir()):  # a workdir from before the options were recorded: as it is
            record.write_text(json.dumps(made, indent=1) + "\n")
        return
    before = json.loads(record.read_text())
    if "--mlflow-uri" not in before:  # a workdir from before the option: the store its search recorded
        before["--mlflow-uri"] = _recorded_store(workdir) or made["--mlflow-uri"]

    def shown(values: dict, key: str) -> str:
        value = values.get(key, "(unset)")
        return f"{key} {value}" if key.startswith("--") else f"{key}={value}"
    other = sorted(k for k in set(made) | set(before) if made.get(k) != before.get(k))
    if other:
        raise AscError(f"{workdir}: its demo was made with {', '.join(shown(before, k) for k in other)}, not "
                       f"{', '.join(shown(made, k) for k in other)}; delete the folder or give another --workdir")


def run_demo(args) -> None:
    # late, as the module says
    from asc.dataset import read_development
    from asc.describe import format_summary, summarize
    from asc.synth import SynthConfig, write_dataset
    from search.predict import format_prediction, predict
    from search.prepare import format_report, prepare
    from search.report import ui_command
    from search.space import load_space
    from search.tracking import check_tracking_uri, default_uri, tracking_uri

    start = time.perf_counter()
    workdir = args.workdir.resolve()
    data, store, storage = workdir / "data", workdir / "store", workdir / "runs"
    submission = workdir / "submission.csv"
    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"epochs={args.epochs}")
    if args.num_samples is not None:
        overrides.append(f"num_samples={args.num_samples}")
    space = load_space(DEMO_SPACE, overrides)  # a wrong --set fails here, before any work
    uri = tracking_uri(args.mlflow_uri, storage)  # --mlflow-uri, $MLFLOW_TRACKING_URI, else the demo's own store
    check_tracking_uri(uri, created=storage)  # an unreachable server: one line, before any work
    _same_options(workdir, _made_with(args, space, uri))

    _step(1, f"synthetic multi-device dataset in {data}")
    if (data / "meta.csv").exists():
        print("      exists: reusing it (delete it to regenerate)")
        dataset = read_development(data)
    else:
        config = SynthConfig(segments_per_scene=args.segments_per_scene, parallel_per_scene=args.parallel_per_scene,
                             seconds=args.seconds, seed=args.seed)
        t = time.perf_counter()
        dataset = write_dataset(data, config, progress=True)
        print(f"      {len(dataset)} clips written in {time.perf_counter() - t:.1f} s")
    print(format_summary(summarize(dataset)))

    configs = space.feature_configs()
    kinds = ", ".join(f"{c.n_mels} Mel bands{' spectrum-corrected' if c.spectrum_correction else ''}" for c in configs)
    _step(2, f"feature stores the search's space needs ({kinds}) in {store}, by Ray tasks")
    print(format_report(prepare(data, store, configs)))

    _step(3, f"search {SEARCH_NAME!r}: {space.description}")
    experiment_id, trials_table = _search(DEMO_SPACE, store, storage, overrides, uri)

    _step(4, "fusion of the trials by Metric B on the selection clips, registered as "
             f"{MODEL_NAME!r} in MLflow's model registry")
    model_uri, fusion_table, reused = _fusion(uri, experiment_id, args.fusion_size)
    print(fusion_table)

    _step(5, f"the fused model's predictions for the evaluation split, from the audio, into {submission}")
    if reused and submission.is_file():
        print(f"      {submission} exists and the fusion is the same: reusing it (delete it to predict again)")
    else:
        print(format_prediction(predict(model_uri, data, submission, fmt="kaggle", split="evaluate", mlflow_uri=uri),
                                model_uri))

    print(f"\n{'=' * 100}\nthe demo's search, best trials first\n{trials_table}\n\n{fusion_table}")
    local = uri == default_uri(storage)  # else --mlflow-uri's or $MLFLOW_TRACKING_URI's
    mlflow_line = ("  runs/mlflow.db, runs/mlartifacts/   the MLflow store: every trial, the fusion, the models\n"
                   if local else "")
    print(f"\nfiles (all under {workdir}):\n"
          f"  data/         the synthetic dataset (meta.csv, evaluation_setup/, audio/)\n"
          f"  store/        the feature stores (Arrow IPC, memory-mapped by every trial)\n"
          f"  runs/demo/    Tune's and Optuna's state of the search (resumable)\n"
          f"{mlflow_line}"
          f"  submission.csv   the fused model's scenes for the evaluation split (Kaggle format)\n"
          f"  demo.json     the options this folder was made with (a rerun with others is refused)\n"
          + ("" if local else f"MLflow: {uri}: every trial, the fusion, the models\n")
          + f"predict other audio: {_from_here()}python -m search predict {model_uri} DATA_DIR --out FILE "
            f"--mlflow-uri {uri}\n"
          f"browse in MLflow: {ui_command(uri, experiment_id)}\n"
          f"demo took {time.perf_counter() - start:.0f} s")


def add_arguments(demo, defaults) -> None:
    demo.add_argument("--workdir", type=Path, default=Path("asc-demo"),
                      help="the folder everything goes under (default %(default)s)")
    add_synth_arguments(demo, defaults)
    demo.add_argument("--num-samples", type=COUNT, default=None, help="trials (default: spaces/demo.yaml's)")
    demo.add_argument("--epochs", type=COUNT, default=None, help="epochs per trial (default: spaces/demo.yaml's)")
    demo.add_argument("--fusion-size", type=integer(1, MAX_FUSION_SIZE), default=6,
                      help="fusion: most picks of each bootstrap resample; the pooled fusion may hold every trial "
                           "some resample picked (default %(default)s)")
    demo.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of spaces/demo.yaml")
    demo.add_argument("--mlflow-uri", default=None,
                      help="tracking URI (order: --mlflow-uri, $MLFLOW_TRACKING_URI, WORKDIR/runs/mlflow.db)")
