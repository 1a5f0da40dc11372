"""bench-replay on a tiny hand-made table whose answers are known, and its refusals of bad tables."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asc.errors import AscError
from search.bench.replay import DEFAULT, RECOMMENDED, Strategy, goals, load_recording, reach, regret_at, replay, summarize

SPACE = """sampler: grid
objective: metric_b
seeds: 2
scheduler: none
params:
  model: cnn
  epochs: 3
  enhancement: {choice: [none, mean_subtraction]}
  lr: {choice: [0.001, 0.003]}
"""


def write_table(path, drop: int = 0, space: str = SPACE, epochs: int = 3):
    """Four configurations x 2 seeds x 3 epochs. The best, mean subtraction at lr 0.003, is better at
    its first epoch (0.70) than any other configuration ever is (at most 0.55)."""
    from search.space import parse_space
    import yaml

    parsed = parse_space(yaml.safe_load(SPACE), "s.yaml", SPACE)
    params = parsed.distinct_points()
    rows = []
    for c, p in enumerate(params):
        best = p["enhancement"] == "mean_subtraction" and p["lr"] == 0.003
        for s in range(2):
            for e in range(1, epochs + 1):
                obj = 0.7 + 0.05 * e if best else 0.3 + 0.05 * e + 0.01 * c
                rows.append({"config": c, "seed": s, "epoch": e, "objective": obj, "eval_metric_b": obj - 0.02})
    rows = rows[:len(rows) - drop]
    meta = {"space": space, "params": json.dumps(params), "experiment": "tiny", "made": "2026-12-03",
            "hardware": "hand-made", "command": "test"}
    pq.write_table(pa.Table.from_pylist(rows).replace_schema_metadata(meta), path)
    return params


def test_replays_of_a_known_table(tmp_path):
    params = write_table(tmp_path / "t.parquet")
    recording = load_recording(tmp_path / "t.parquet")
    target_a, target_b, best, pick = recording.targets()
    assert best == pick and params[best]["enhancement"] == "mean_subtraction" and params[best]["lr"] == 0.003
    assert target_a == pytest.approx(0.7 + 0.15 - 0.02)

    grid = replay(Strategy("grid", sampler="grid"), recording, seed=0)
    order = [c for c, _, _ in grid.decisions]
    assert sorted(order) == [0, 1, 2, 3] and grid.distinct == 4 and grid.budget[-1] == 12
    assert all(epochs == 3 and how == "finished" for _, epochs, how in grid.decisions)
    # The pick becomes the best configuration at its first epoch; within 1 point of (a) at its last.
    assert reach(grid, recording, target_a) == 3 * order.index(best) + 3
    assert reach(grid, recording, target_a - 0.2) == 3 * order.index(best) + 1  # its first epoch is enough

    # without de-duplication TPE trains the best configuration again; the repeat is another trial and
    # does not move the pick back to its first epoch (the search keeps the first trial's checkpoint)
    again = replay(Strategy("TPE, no de-duplication", dedup=False), recording, seed=0, num_samples=8)
    assert sum(c == best for c, _, _ in again.decisions) >= 2
    epochs_of_pick = [e for c, e in zip(again.pick, again.pick_epoch) if c == best]
    assert epochs_of_pick == sorted(epochs_of_pick) and epochs_of_pick[-1] == 3

    tpe = replay(Strategy("TPE"), recording, seed=1)
    assert tpe.distinct == 4 and len(tpe.decisions) == 4  # each configuration once, though num_samples allows more
    default = replace(DEFAULT, grace=2)  # the default's rules, its first rung inside this table's 3 epochs
    row = summarize(DEFAULT.name, default, [replay(default, recording, seed=s) for s in range(3)], recording)
    assert row["distinct"] == 4 and row["regret_50"][1] == pytest.approx(0.0)

    # The goals, judged against the peers the rows hold (here random search alone), each as computed
    rand = summarize("random", Strategy("random", sampler="random"),
                     [replay(Strategy("random", sampler="random"), recording, seed=s) for s in range(3)], recording)
    met = dict(goals([row, rand]))
    assert len(met) == 2 and all(line.startswith(DEFAULT.name) for line in met)
    reach_line = next(line for line in met if "reaches (b)" in line)
    assert met[reach_line] == (row["reach_b"][1] / row["grid_budget"] <= 0.25)
    regret_line = next(line for line in met if "random search's" in line)
    between = [f for f in row["fracs"] if 0.1 - 1e-9 <= f <= 0.5 + 1e-9]  # every budget from 10% to 50%
    assert met[regret_line] == all(regret_at(row, f) < regret_at(rand, f) for f in between)
    assert met[regret_line] or "; not at " in regret_line
    # a several-seed search against one-seed peers at equal compute: their regret at K times its budget
    several = replace(default, name=f"{DEFAULT.name}, {RECOMMENDED}", seeds=2, noise_z=0.5)
    row2 = summarize(several.name, several, [replay(several, recording, seed=s) for s in range(3)], recording)
    line = next(line for line, _ in goals([row, rand, row2]) if line.startswith(several.name) and "random" in line)
    assert "random search's (at 20%, 50%, 100%)" in line
    assert "random search's (at 20%, 50%, 100%) " + " ".join(f"{regret_at(rand, 2 * b):.1f}" for b in (0.10, 0.25, 0.50)) \
        in line
    assert line.endswith("; not at 41 of the 41 budgets from 10% to 50% (10-50% of the grid's)")  # behind at every one


def test_bad_tables_are_one_line(tmp_path):
    with pytest.raises(AscError, match=r"nope.parquet: no replay table here"):
        load_recording(tmp_path / "nope.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(AscError, match=r"junk.parquet: not a readable Parquet table"):
        load_recording(tmp_path / "junk.parquet")
    write_table(tmp_path / "short.parquet", drop=5)
    with pytest.raises(AscError, match=r"short.parquet: 19 rows, not 4 configurations x 2 seeds x 3 epochs"):
        load_recording(tmp_path / "short.parquet")
    write_table(tmp_path / "early.parquet", epochs=2)  # whole, but its last epoch is missing
    with pytest.raises(AscError, match=r"early.parquet: 2 seeds x 2 epochs, where its space trains 2 x 3"):
        load_recording(tmp_path / "early.parquet")
    write_table(tmp_path / "other.parquet", space=SPACE.replace("0.003]", "0.003, 0.01]"))
    with pytest.raises(AscError, match=r"other.parquet: its configurations are not those of its space"):
        load_recording(tmp_path / "other.parquet")
    pq.write_table(pa.table({"x": np.arange(3)}), tmp_path / "plain.parquet")
    with pytest.raises(AscError, match=r"plain.parquet: not a replay table"):
        load_recording(tmp_path / "plain.parquet")
    write_table(tmp_path / "yaml.parquet", space="params: [oops")
    with pytest.raises(AscError, match=r"yaml.parquet: its metadata is damaged"):
        load_recording(tmp_path / "yaml.parquet")
    table = pq.read_table(tmp_path / "other.parquet")
    meta = {**table.schema.metadata, b"params": b"{not json"}
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "json.parquet")
    with pytest.raises(AscError, match=r"json.parquet: its metadata is damaged"):
        load_recording(tmp_path / "json.parquet")
    whole = pq.read_table(tmp_path / "other.parquet")  # its metadata whole, its rows not
    pq.write_table(whole.slice(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(AscError, match=r"empty.parquet: a replay table without rows"):
        load_recording(tmp_path / "empty.parquet")
    text = whole.set_column(whole.column_names.index("objective"), "objective",
                            pa.array([str(v) for v in whole.column("objective").to_pylist()]))
    pq.write_table(text, tmp_path / "text.parquet")
    with pytest.raises(AscError, match=r"text.parquet: column 'objective' holds string values, not numbers"):
        load_recording(tmp_path / "text.parquet")
    write_table(tmp_path / "badspace.parquet", space=SPACE + "bogus: 1\n")
    with pytest.raises(AscError, match=r"badspace.parquet \(its recorded space\): bogus: unknown key"):
        load_recording(tmp_path / "badspace.parquet")
    write_table(tmp_path / "good.parquet")
    good = pq.read_table(tmp_path / "good.parquet")
    rows = good.to_pylist()
    pq.write_table(pa.Table.from_pylist(rows[:-1] + rows[:1]).replace_schema_metadata(good.schema.metadata),
                   tmp_path / "twice.parquet")  # the row count whole, one row in another's place
    with pytest.raises(AscError, match=r"twice.parquet: configuration 0, seed 0, epoch 1 recorded twice"):
        load_recording(tmp_path / "twice.parquet")
    rows[3]["objective"] = float("nan")
    pq.write_table(pa.Table.from_pylist(rows).replace_schema_metadata(good.schema.metadata), tmp_path / "nan.parquet")
    with pytest.raises(AscError, match=r"nan.parquet: a figure that is not a finite number"):
        load_recording(tmp_path / "nan.parquet")


def test_a_replay_through_the_real_tune_loop_makes_the_simulations_decisions(tmp_path):
    """The simulation stands for Ray Tune's controller: one replay of the default's rules, and of its
    several-seed variant (noise_z reads the seeds' error), through `ray.tune.Tuner` ends every trial at
    the epoch the simulation ends it."""
    from search.bench.replay import tune_check

    write_table(tmp_path / "t.parquet")
    recording = load_recording(tmp_path / "t.parquet")
    for strategy in (replace(DEFAULT, grace=2), replace(DEFAULT, grace=2, seeds=2, noise_z=0.5)):
        tuned, simulated = tune_check(strategy, recording, seed=0, storage=tmp_path / strategy.name.replace(" ", "_"))
        assert len(tuned) == 4 and tuned == simulated, strategy
        assert any(epochs < 3 for _, epochs in tuned), (strategy, tuned)  # ASHA stopped something


@pytest.mark.parametrize("args, culprit", [
    (["--json", "TMP/no/out.json"], "--json: TMP/no/out.json: no folder TMP/no to write it into"),
    (["--json", "TMP"], "--json: TMP: expected a file ending in .json"),
    (["--plot", "TMP/plot.xyz"], "--plot: TMP/plot.xyz: expected a file ending in .png or .pdf or .svg"),
    (["--mlflow-uri", "sqlite:///TMP/no/m.db"], "MLflow store sqlite:///TMP/no/m.db: folder TMP/no does not exist"),
    (["--mlflow-uri", "sqlite:///TMP/junk.db"], "MLflow tracking URI 'sqlite:///TMP/junk.db': cannot use it"),
], ids=["json folder", "json is a folder", "plot format", "database folder", "damaged database"])
def test_where_the_results_go_is_checked_before_any_replay(args, culprit, tmp_path, capsys, monkeypatch):
    """The files and the MLflow store written at the end of the replays are checked when the command
    starts: one line, no replay run, nothing written."""
    from search.bench.replay import main

    write_table(tmp_path / "good.parquet")
    (tmp_path / "junk.db").write_bytes(b"SQLite format 3\0" + bytes(100))
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        status = main(["--table", str(tmp_path / "good.parquet"), "--replays", "1", "--only", "random",
                       *[a.replace("TMP", str(tmp_path)) for a in args]])
    except SystemExit as stop:  # argparse's own refusals
        status = stop.code
    out, err = capsys.readouterr()
    assert status == 2 and len(err.splitlines()) == 1 and culprit.replace("TMP", str(tmp_path)) in err, err
    assert "replays" not in out + err and sorted(p.name for p in tmp_path.iterdir()) == before
