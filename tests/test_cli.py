"""Every command line, with what a user can type wrong: a non-zero exit and one ``error:`` line naming
the culprit, never a traceback, and nothing trained or written before the error.

The option checks walk the parsers themselves, so that an option or command added later is covered
by the same tests without a new row.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asc.dataset import read_development
from asc.store import build_stores

REPO = Path(__file__).resolve().parents[1]


def _parsers() -> dict[str, argparse.ArgumentParser]:
    import asc.__main__
    import search.__main__
    import search.bench.devices
    import search.bench.features
    import search.bench.search
    import search.bench.train

    return {"asc": asc.__main__.build_parser(), "search": search.__main__.build_parser(),
            "bench-features": search.bench.features.build_parser(), "bench-train": search.bench.train.build_parser(),
            "bench-search": search.bench.search.build_parser(), "bench-devices": search.bench.devices.build_parser()}


def _commands():
    """(top parser name, command words, parser) for every parser and sub-command parser."""
    for name, parser in _parsers().items():
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield name, [], parser
        for sub in subs:
            for command, subparser in sub.choices.items():
                if subparser._actions and any(a.option_strings == ["-h"] or "--help" in a.option_strings
                                              for a in subparser._actions):
                    yield name, [command], subparser


def _numeric_options():
    for name, words, parser in _commands():
        for action in parser._actions:
            if action.option_strings and action.type is not None and action.type not in (str, Path):
                yield pytest.param(name, words, parser, action, id=f"{name}-{'-'.join(words)}{action.option_strings[-1]}")


def _filler(parser: argparse.ArgumentParser, skip: argparse.Action) -> list[str]:
    """Placeholder values for the required arguments, so that the option under test is what fails."""
    argv = []
    for action in parser._actions:
        if action is skip or isinstance(action, argparse._SubParsersAction):
            continue
        if not action.option_strings and action.nargs != 0:
            argv.append("x")
        elif action.required:
            argv += [action.option_strings[-1], "x"]
    return argv


@pytest.mark.parametrize("name, words, parser, action", list(_numeric_options()))
def test_every_numeric_option_refuses_what_it_cannot_use(name, words, parser, action, capsys):
    assert action.type not in (int, float), (
        f"{action.option_strings[-1]}: use asc.cli.integer / number (they refuse nan, inf and out-of-range values)")
    top = _parsers()[name]
    for bad in ("abc", "nan", "inf", "-5", "1e400"):
        if action.type.__name__ == "integer" and bad == "1e400":
            bad = "1.5"
        with pytest.raises(SystemExit) as exit_info:
            top.parse_args(words + [action.option_strings[-1], bad] + _filler(parser, action))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert action.option_strings[-1] in lines[0] and "Traceback" not in err, err


@pytest.mark.parametrize("name, words, parser, action", list(_numeric_options()))
def test_every_numeric_option_accepts_its_default_and_documented_bounds(name, words, parser, action):
    """The other half: the bounds must not refuse what was legitimate (defaults, 0 workers, -1 retries)."""
    top = _parsers()[name]
    option = action.option_strings[-1]
    values = [action.default[0] if isinstance(action.default, list) else action.default]
    values += {"--workers": ["0"], "--max-failures": ["-1"], "--fmin": ["0"], "--seed": ["0", str(2**32 - 1)],
               "--bags": ["0"], "--parallel-per-scene": ["0"], "--gpus-per-trial": ["0.25"]}.get(option, [])
    for value in [v for v in values if v is not None]:
        args = top.parse_args(words + _filler(parser, action) + [option, str(value)])
        assert getattr(args, action.dest) in (action.type(str(value)), [action.type(str(value))])


def test_the_fusion_options_refuse_on_the_command_line_what_fuse_refuses():
    """The demo's --fusion-size and fuse's --size and --bags stop at the bounds fuse() checks, before a
    demo has written its set, stores and search."""
    from asc.cli import MAX_FUSION_BAGS, MAX_FUSION_SIZE

    bounded = {("search", ("demo",), "--fusion-size"): MAX_FUSION_SIZE, ("search", ("fuse",), "--size"): MAX_FUSION_SIZE,
               ("search", ("fuse",), "--bags"): MAX_FUSION_BAGS}
    seen = set()
    for name, words, parser in _commands():
        for action in parser._actions:
            key = (name, tuple(words), action.option_strings[-1] if action.option_strings else "")
            if key in bounded:
                seen.add(key)
                assert action.type(str(bounded[key])) == bounded[key]
                with pytest.raises(argparse.ArgumentTypeError, match="out of range"):
                    action.type(str(bounded[key] + 1))
    assert seen == set(bounded)


@pytest.fixture(scope="module")
def store(synth_set, fast_config, tmp_path_factory):
    return build_stores(read_development(synth_set), [fast_config], tmp_path_factory.mktemp("store")).built[0]


def _main(tool: str, argv: list[str]) -> int:
    import asc.__main__
    import search.__main__

    return (asc.__main__ if tool == "asc" else search.__main__).main(argv)


# (tool, argv with DATA, STORE, TMP placeholders, what the one line must name)
BAD_RUNS = [
    ("asc", ["describe", "TMP/file"], "TMP/file: a file; give a dataset folder"),
    ("asc", ["describe", "TMP/none"], "TMP/none: no such dataset folder"),
    ("asc", ["describe", "DATA", "--fold", "2"], "fold2_train.csv: missing"),
    ("asc", ["synth", "TMP/file"], "TMP/file: already exists"),
    ("asc", ["synth", "TMP/file/below"], "TMP/file/below: cannot write here"),
    ("asc", ["synth", "TMP/new", "--segments-per-scene", "1"], "--segments-per-scene must be at least 2"),
    ("asc", ["synth", "TMP/new", "--seconds", "1e-9"], "--seconds"),
    ("asc", ["synth", "TMP/new", "--sample-rate", "100"], "--sample-rate must be at least 8000"),
    ("search", ["prepare", "DATA", "--store", "TMP/s", "--sample-rate", "22050", "--fmin", "20000", "--fmax", "10000"],
     "fmin 20000 Hz must be below fmax 10000 Hz"),
    ("search", ["prepare", "DATA", "--store", "TMP/s", "--sample-rate", "22050", "--fmax", "20000"],
     "fmax 20000.0 Hz is above the Nyquist frequency"),
    ("search", ["prepare", "DATA", "--store", "TMP/s", "--sample-rate", "22050", "--n-fft", "65536"],
     "shorter than n_fft 65536"),
    ("search", ["prepare", "DATA", "--store", "TMP/s", "--sample-rate", "22050", "--n-fft", "1024", "--hop-length",
                "40000"], "shorter than hop_length 40000"),
    ("search", ["prepare", "DATA", "--store", "TMP/file", "--sample-rate", "22050", "--n-fft", "1024"],
     "TMP/file: cannot write a feature store here"),
    ("search", ["prepare", "TMP/file", "--store", "TMP/s"], "TMP/file: a file; give a dataset folder"),
    ("asc", ["train", "--store", "STORE", "--system", "Z9", "--model", "cnn"], "Z9"),
    ("asc", ["train", "--store", "TMP", "--system", "A2", "--model", "cnn"], "no feature store here"),
    ("asc", ["train", "--store", "STORE", "--system", "A2", "--model", "cnn", "--json-out", "TMP/no/x.json"],
     "--json-out TMP/no/x.json: no folder TMP/no"),
    ("asc", ["train", "--store", "STORE", "--system", "A2", "--model", "cnn", "--checkpoint-dir", "TMP/file"],
     "checkpoint_dir TMP/file: is a file"),
    ("asc", ["train", "--store", "STORE", "--system", "A2", "--model", "cnn", "--device", "nonsense"], "nonsense"),
    ("asc", ["compare", "--store", "STORE", "--systems", "A2", "Z9", "--model", "cnn", "--epochs", "1"], "Z9"),
    # A1 (no pretraining) would train first; A2's missing weights must stop the command before it
    ("asc", ["compare", "--store", "STORE", "--systems", "A1", "A2", "--epochs", "1", "--weights", "TMP/none.pth"],
     "TMP/none.pth: ImageNet Xception weights not found"),
    ("asc", ["compare", "--store", "STORE", "--systems", "A2", "--model", "cnn", "--json-out", "TMP"],
     "--json-out TMP: is a folder"),
    ("search", ["fuse", "--experiment", "x", "--mlflow-uri", "sqlite:///TMP/none.db"], "sqlite:///TMP/none.db: no such database"),
    ("search", ["predict", "models:/x/1", "DATA", "--out", "TMP/o.csv", "--mlflow-uri", "sqlite:///TMP/none.db"],
     "sqlite:///TMP/none.db: no such database"),
    # nothing listens on port 1 of the loopback (a port below 1024 that no test binds)
    ("search", ["fuse", "--experiment", "x", "--mlflow-uri", "http://127.0.0.1:1"],
     "MLflow tracking server http://127.0.0.1:1: not reachable"),
    ("search", ["predict", "models:/x/1", "DATA", "--out", "TMP/o.csv", "--mlflow-uri", "http://127.0.0.1:1"],
     "MLflow tracking server http://127.0.0.1:1: not reachable"),
    ("search", ["predict", "TMP/nomodel", "DATA", "--out", "TMP/o.csv"], "model TMP/nomodel: no such file or folder"),
    ("search", ["predict", "TMP", "TMP/file", "--out", "TMP/o.csv"], "TMP/file: a file; give a dataset folder"),
    ("search", ["predict", "TMP", "DATA", "--out", "TMP/o.csv"], "model TMP: a folder without an MLmodel file"),
    ("search", ["run", "spaces/smoke.yaml", "--store", "STORE", "--storage", "TMP/file"], "--storage TMP/file"),
    ("search", ["resume", "nosuch", "--storage", "TMP"], "no search named 'nosuch'"),
    # what the selection clips cannot give, seen in the dataset before --data builds a store
    ("search", ["run", "spaces/smoke.yaml", "--data", "DATA", "--store", "TMP/s", "--storage", "TMP/runs",
                "--set", "objective=acc_unseen", "--set", "batch_size=8"],
     "objective: acc_unseen needs clips of devices unseen in training"),
]


@pytest.mark.parametrize("tool, argv, culprit", BAD_RUNS, ids=[" ".join(r[1][:1] + r[1][-2:]) for r in BAD_RUNS])
def test_bad_invocations_are_one_line_before_any_work(tool, argv, culprit, synth_set, store, tmp_path, capsys,
                                                     monkeypatch):
    monkeypatch.chdir(REPO)
    (tmp_path / "file").write_text("x")
    swap = lambda s: s.replace("DATA", str(synth_set)).replace("STORE", store).replace("TMP", str(tmp_path))  # noqa: E731
    status = _main(tool, [swap(a) for a in argv])
    out, err = capsys.readouterr()
    assert status != 0, out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert swap(culprit) in lines[0] and "Traceback" not in err, err
    assert "best epoch" not in out  # nothing was trained first
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").glob("logmel*"))
    assert not (tmp_path / "none.db").exists()  # a command that reads does not create a store


# `search run` refusing before Ray starts: (extra argv, --set items, what the one line must name).
# Port 1 of the loopback: nothing listens there (below 1024, no test binds it).
BAD_SEARCHES = [
    (["--mlflow-uri", "http://127.0.0.1:1"], [], ["MLflow tracking server http://127.0.0.1:1: not reachable"]),
    (["--mlflow-uri", "bogus://host/x"], [], ["MLflow tracking URI 'bogus://host/x'"]),  # a scheme MLflow lacks
    (["--mlflow-uri", "file:///tmp/x"], [], ["MLflow tracking URI 'file:///tmp/x'"]),  # one MLflow 3 refuses
    ([], ["n_mels=40"], ["python -m search prepare DATA_DIR", "--n-mels 40", "--sample-rate 22050"]),  # no such store
    (["--mlflow-uri", "sqlite:///TMP/other/mlflow.db"], [], ["already has an experiment named 'x'"]),
    (["--mlflow-uri", "sqlite:///TMP/other/art"], [], ["sqlite:///TMP/other/art': cannot use it"]),  # not a database
    ([], ["model=msxception", "weights=TMP/none.pth"], ["TMP/none.pth: ImageNet Xception weights not found"]),
    # the enhancements' own settings, from their definitions
    ([], ["enhancement=dir", "dir_responses=TMP/none"], ["params.dir_responses", "TMP/none: no such folder"]),
    ([], ["enhancement=freq_mixstyle", "freq_mixstyle_p=1.5"], ["params.freq_mixstyle_p: 1.5 must be <= 1"]),
    ([], ["enhancement=freq_mixstyle", "freq_mixstyle_alpha=0"], ["params.freq_mixstyle_alpha: 0.0 must be > 0"]),
    ([], ["enhancement=nosuch"], ["params.enhancement: 'nosuch' is not one of"]),
    ([], ["enhancement=freq_mixstyle+mean_subtraction"], ["write mean_subtraction+freq_mixstyle"]),
]


@pytest.mark.parametrize("extra, sets, culprits", BAD_SEARCHES,
                         ids=["unreachable server", "unknown scheme", "file scheme", "no store", "name taken",
                              "damaged database", "no weights", "no responses", "fms p", "fms alpha",
                              "no such enhancement", "order"])
def test_a_search_that_cannot_run_is_one_line_before_ray_starts(extra, sets, culprits, store, tmp_path, capsys,
                                                                monkeypatch):
    """An unreachable tracking server, a URI MLflow cannot use, a store not prepared and a name the
    tracking store already holds: one line naming it, before Ray starts, and nothing written (not even
    an empty --storage)."""
    from mlflow.tracking import MlflowClient

    from tests.helpers import SHRINK, SMOKE

    (tmp_path / "other").mkdir()
    MlflowClient(f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}").create_experiment(
        "x", artifact_location=str(tmp_path / "other" / "art"))
    (tmp_path / "other" / "art").write_bytes(b"SQLite format 3\0" + bytes(100))  # a damaged database file
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = ["run", str(SMOKE), "--store", str(Path(store).parent), "--storage", str(tmp_path / "runs"), "--name", "x",
            *[a.replace("TMP", str(tmp_path)) for a in extra]]
    for item in [*SHRINK, *sets]:
        argv += ["--set", item.replace("TMP", str(tmp_path))]
    status = _main("search", argv)
    err = capsys.readouterr().err
    assert status == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(c.replace("TMP", str(tmp_path)) in err for c in culprits), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, culprit", [
    (["fuse", "--experiment", "x"], "sqlite:///TMP/env.db: no such database (from MLFLOW_TRACKING_URI: "),
    (["predict", "models:/x/1", "DATA", "--out", "TMP/o.csv"], "sqlite:///TMP/env.db: no such database (from MLFLOW"),
    (["predict", "models:/x/1", "DATA", "--out", "TMP/o.csv", "--mlflow-uri", "sqlite:///TMP/real.db"],
     "models:/x/1: cannot load it (Registered Model with name=x not found)"),  # the option beats the variable
    (["predict", "models:/x@champion", "DATA", "--out", "TMP/o.csv", "--mlflow-uri", "sqlite:///TMP/real.db"],
     "models:/x@champion: cannot load it (Registered Model with name=x not found)"),
    # a registered model without that alias
    (["predict", "models:/y@champion", "DATA", "--out", "TMP/o.csv", "--mlflow-uri", "sqlite:///TMP/real.db"],
     "models:/y@champion: cannot load it (Registered model alias champion not found.)"),
], ids=["fuse", "predict", "option first", "no such model", "no such alias"])
def test_commands_use_mlflow_tracking_uri_as_mlflow_users_expect(argv, culprit, synth_set, tmp_path, capsys, monkeypatch):
    """MLFLOW_TRACKING_URI when --mlflow-uri is not given; the option when it is; a model or alias the
    store does not hold is one line, and no submission file is written."""
    from mlflow.tracking import MlflowClient

    real = f"sqlite:///{tmp_path / 'real.db'}"
    MlflowClient(real, registry_uri=real).create_registered_model("y")  # a store with one model, no alias
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    swap = lambda s: s.replace("DATA", str(synth_set)).replace("TMP", str(tmp_path))  # noqa: E731
    status = _main("search", [swap(a) for a in argv])
    err = capsys.readouterr().err
    assert status == 2 and len(err.splitlines()) == 1 and swap(culprit) in err, err
    assert not (tmp_path / "env.db").exists() and not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("argv, culprit", [
    (["run", "spaces/smoke.yaml", "--store", "TMP/s", "--storage", "TMP/runs"], "TMP/gone/env.db: folder TMP/gone"),
    (["demo", "--workdir", "TMP/demo"], "TMP/gone/env.db: folder TMP/gone"),
    (["demo", "--workdir", "TMP/demo", "--mlflow-uri", "sqlite:///TMP/away/o.db"], "TMP/away/o.db: folder TMP/away"),
], ids=["run", "demo", "demo option first"])
def test_commands_that_write_use_mlflow_tracking_uri_too(argv, culprit, tmp_path, capsys, monkeypatch):
    """``run`` and the demo track into MLFLOW_TRACKING_URI when --mlflow-uri is not given (a store
    whose folder is missing shows which one they took): one line, before any work."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'gone' / 'env.db'}")
    swap = lambda s: s.replace("TMP", str(tmp_path))  # noqa: E731
    status = _main("search", [swap(a) for a in argv])
    err = capsys.readouterr().err
    assert status == 2 and len(err.splitlines()) == 1 and swap(culprit) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no search folder, no demo folder


def _run(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_worker_niceness": "0"}
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, timeout=300, **kwargs)


def test_describe_piped_into_head_ends_quietly(synth_set):
    result = _run("bash", "-c", f"{sys.executable} -m asc describe {synth_set} --no-audio | head -1; "
                  "echo status=${PIPESTATUS[0]} >&2")
    assert result.stdout.count("\n") == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.stderr.strip() in ("status=0", "status=141"), result.stderr




def test_only_the_command_line_sets_its_quiet_defaults():
    """A process that loads a logged model imports this package (the model carries it): its environment
    and logging stay its own. ``python -m search`` sets the command line's defaults."""
    probe = ("import logging, os, sys; import search.serving, search.tuner; "
             "print(sorted(k for k in ('TUNE_WARN_THRESHOLD_S', 'MLFLOW_HTTP_REQUEST_MAX_RETRIES', "
             "'MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT', 'MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR', "
             "'MLFLOW_LOGGING_LEVEL') if k in os.environ), "
             "logging.getLogger('alembic.runtime.migration').level)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNE_", "MLFLOW_"))}
    out = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] 0", out
    cli = subprocess.run([sys.executable, "-c", "import runpy, os, sys; sys.argv = ['search', '--help'];\n"
                          "try: runpy.run_module('search', run_name='__main__')\nexcept SystemExit: pass\n"
                          "print(os.environ['TUNE_WARN_THRESHOLD_S'])"], cwd=Path(__file__).resolve().parents[1],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert cli.strip().endswith("5"), cli[-200:]


def test_a_ray_without_the_internals_the_console_routing_uses_keeps_its_messages_on_the_console(tmp_path, monkeypatch,
                                                                                                 capsys):
    """The search files Ray's messages through Ray 2.60's internals; another Ray says so and goes on."""
    import search.console as console

    monkeypatch.setattr(console, "ray_worker", None)
    assert console.route_ray_messages(tmp_path) == tmp_path / console.LOG_FILE
    out = capsys.readouterr().out
    assert out.startswith("note: Ray ") and "they stay on the console" in out and len(out.splitlines()) == 1
