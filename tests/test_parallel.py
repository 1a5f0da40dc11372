"""A trial uses the CPUs Ray gave it, not the node's: after ``limit_cpus(n)`` (what the trainable
calls with Ray's assigned resources) torch runs n threads and ``process_map`` starts at most n
processes, so that two trials sharing a node do not oversubscribe it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

def _pid(_):
    return os.getpid()


def test_limit_cpus_bounds_torch_threads_and_process_map_workers(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(
        "import json, os\n"
        "import torch\n"
        "from asc.parallel import available_cpus, limit_cpus, process_map\n"
        "from tests.test_parallel import _pid\n"
        "if __name__ == '__main__':\n"
        "    cores = available_cpus()\n"
        "    assert limit_cpus(1.5) == 1\n"
        "    pids = set(process_map(_pid, range(6)))\n"
        "    print(json.dumps({'cores': cores, 'after': available_cpus(), 'threads': torch.get_num_threads(),\n"
        "                      'workers': len(pids), 'own': pids == {os.getpid()}}))\n")
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    # one CPU: no pool at all, the work runs in the trial's own process
    assert got["after"] == 1 and got["threads"] == 1 and got["workers"] == 1 and got["own"], got
