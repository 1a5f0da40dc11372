"""bench-search at test size: the memory measurement on the shared small store (two reader processes),
its table, and the command's wiring. The overhead and efficiency parts run searches (minutes): they are
exercised by running the benchmark itself (`python -m search bench-search --scale tiny --efficiency`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from asc.dataset import read_development
from asc.store import build_stores

REPO = Path(__file__).resolve().parents[1]


def test_memory_part_sees_one_shared_copy_and_prints_its_rows(synth_set, fast_config, tmp_path):
    from search.bench import CpuMeter
    from search.bench.search import format_table, memory_part, rows

    store = build_stores(read_development(synth_set), [fast_config], tmp_path / "store").built[0]
    meter = CpuMeter()
    mem = memory_part(str(store), 2, meter)
    assert mem["rows"] == len(read_development(synth_set))
    assert mem["mappers"] == 2 and mem["mappers_are_readers"]
    # Every page of the store is mapped by both readers and shared: its Pss sums to one copy, none private.
    assert 0.8 <= sum(mem["store_pss"]) / mem["store_bytes"] <= 1.2, mem["store_pss"]
    assert all(0.8 <= rss / mem["store_bytes"] <= 1.2 for rss in mem["store_rss"])
    assert sum(mem["store_private"]) <= 0.1 * mem["store_bytes"]
    table = rows({"memory": mem}, meter)
    assert [r["measure"].split(",")[0] for r in table] == ["memory"] * 4
    text = format_table({"memory": mem}, table, meter)
    assert "| goal" in text and "met?" in text and "processes mapping the store: 2 (the readers only)" in text


def test_bench_search_is_a_search_command():
    done = subprocess.run([sys.executable, "-m", "search", "bench-search", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--efficiency" in done.stdout and "--concurrent" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "search", "bench-search", "--trials", "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error:" in bad.stderr


def test_bench_chaos_times_the_work_each_kill_threw_away_from_the_killed_workers_reports():
    """bench-chaos's cost of a kill: from the killed worker's last report to the kill; a kill of a
    worker that never reported (during its start or restore) is counted apart, as it cannot be timed."""
    from search.bench.chaos import kill_costs, rows

    records = {"p00": {"reports": [(10, 100), (10, 105), (11, 112)], "raw": 3, "rows": []},
               "p01": {"reports": [(20, 101)], "raw": 1, "rows": []}}
    kills = [(107.5, 10), (103.0, 20), (109.0, 12)]  # 2.5 s into p00's epoch, 2 s into p01's, a new worker
    assert kill_costs(kills, records) == (4.5, 1)
    assert kill_costs([], records) == (0.0, 0)
    calm = {"records": {"p00": {"reports": [], "raw": 2, "rows": [{"epoch": 1, "time_this_iter_s": 2.0},
                                                                  {"epoch": 2, "time_this_iter_s": 4.0}]}},
            "retries": 0, "finished": 1, "trials": 1, "failed": 0, "table": "", "mlflow_runs": 1, "running": 0,
            "seconds": 10.0, "kept_going": 0}
    table = {r["measure"].split(",")[0]: r["this_project"] for r in rows(calm, {5.0: {**calm, "kills": kills,
                                                                                   "records": records}})}
    assert table["seconds of training the kills threw away (each up to 1 s over)"] == 4.5
    assert table["the same in undisturbed trial-epochs (3.0 s each)"] == 1.5
    assert table["kills before the worker's first report (start and restore lost: not timed)"] == 1
