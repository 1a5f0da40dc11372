"""Training throughput: clips/s of the real training loop (``asc.train.train``) per model and precision,
and the share of each epoch spent waiting for data.

    python -m search bench-train [--clips 96] [--models cnn msxception] [--epochs 2]

It writes a synthetic set of 10 s, 44.1 kHz clips, prepares its 128 x 430 store, and trains each
model for a few epochs; the figures are those of the last epoch (the first one pays for start-up).
On a GPU it runs fp32 and bf16 autocast with channels_last side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from asc.cli import PROCESSES, ArgumentParser, COUNT
from asc.enhance import Enhancement
from asc.features import FeatureConfig
from asc.models import ModelConfig
from asc.store import build_stores
from asc.synth import SynthConfig, write_dataset
from asc.train import TrainConfig, train

BATCH = {"cnn": 32, "msxception": 32}  # the paper's batch size for both


def _modes(device: str) -> list[dict]:
    if device.startswith("cuda"):
        return [dict(bf16=False, channels_last=False, label="fp32"),
                dict(bf16=True, channels_last=True, label="bf16 + channels_last")]
    return [dict(bf16=False, channels_last=False, label="fp32")]


def run(store: str, models: list[str], epochs: int, device: str, workers: int, batch: dict) -> list[dict]:
    rows = []
    for name in models:
        for mode in _modes(device):
            config = TrainConfig(store=store, model=ModelConfig(name=name, pretrained=False),
                                 enhancement=Enhancement("gmsvn"), epochs=epochs, batch_size=batch[name],
                                 device=device, bf16=mode["bf16"], channels_last=mode["channels_last"],
                                 num_workers=workers)
            print(f"training {name} ({mode['label']}) for {epochs} epochs ...", file=sys.stderr, flush=True)
            last = train(config)["history"][-1]
            rows.append({"model": name, "device": device, "precision": mode["label"], "batch": batch[name],
                         "workers": workers, "train_clips_per_s": last["train_clips_per_s"],
                         "data_wait_share": last["data_wait_share"], "epoch_seconds": last["seconds"]})
    return rows


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def format_rows(rows: list[dict]) -> str:
    head = f"{'model':<11}{'device':<8}{'precision':<22}{'batch':>6}{'workers':>8}{'clips/s':>9}{'data wait':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<11}{r['device']:<8}{r['precision']:<22}{r['batch']:>6}{r['workers']:>8}"
                     f"{r['train_clips_per_s']:>9.1f}{100 * r['data_wait_share']:>10.1f}%")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m search bench-train", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=COUNT, default=96, help="training clips, about (default %(default)s)")
    parser.add_argument("--models", nargs="+", default=["cnn", "msxception"], choices=["cnn", "msxception"])
    parser.add_argument("--epochs", type=COUNT, default=2, help="the last epoch is measured (default %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=PROCESSES, default=None, help="DataLoader workers (default: 0 on CPU, 4 on GPU)")
    parser.add_argument("--store", default=None, help="use this store instead of writing a synthetic one")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workers = args.workers if args.workers is not None else (4 if args.device.startswith("cuda") else 0)
    work = Path(tempfile.mkdtemp(prefix="asc-bench-train-"))
    try:
        store = args.store
        if store is None:
            per_scene = max(2, round(args.clips / 10 * 3 / 2))  # two thirds of the segments train
            dataset = write_dataset(work / "data", SynthConfig(segments_per_scene=per_scene, parallel_per_scene=0))
            store = build_stores(dataset, [FeatureConfig()], work / "store").built[0]
        rows = run(store, args.models, args.epochs, args.device, workers, BATCH)
        print(f"machine: {machine()}")
        print(format_rows(rows))
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
