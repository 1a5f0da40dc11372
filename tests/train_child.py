"""A training run in a child process, for tests/test_faults.py to kill at a fault point:
``python -m tests.train_child CONFIG_JSON SEEDS_JSON`` trains ``TrainConfig.from_dict(CONFIG)`` with one
torch thread (one seed: ``train``; several: ``train_seeds`` in lockstep) and prints nothing."""

from __future__ import annotations

import json
import sys

from asc.parallel import limit_cpus
from asc.train import TrainConfig, train, train_seeds

if __name__ == "__main__":
    config, seeds = TrainConfig.from_dict(json.loads(sys.argv[1])), json.loads(sys.argv[2])
    limit_cpus(1)
    if len(seeds) == 1:
        train(config)
    else:
        train_seeds(config, seeds)
