"""What a dataset folder holds: counts per split and device, scenes, parallel groups, audio formats."""

from __future__ import annotations

import collections

from asc.dataset import Dataset, audio_info
from asc.progress import each

PROGRESS_MIN_FILES = 200  # below this, checking headers takes well under a second: no bar


def summarize(dataset: Dataset, check_audio: bool = True, progress: bool = True) -> dict:
    """A JSON-ready summary of ``dataset``.

    ``splits`` maps split -> device -> clips (unlabeled sets have the single split ``test`` and
    device ``?``); ``scenes`` counts every clip of meta.csv per scene; ``parallel_groups`` counts
    segments recorded by the reference device and at least one other. With ``check_audio`` every
    file's header is read (an unreadable file is an AscError) and ``audio`` tallies what was found.
    """
    splits: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    scenes: collections.Counter = collections.Counter()
    for clip in dataset.clips:
        splits[clip.split][clip.device or "?"] += 1
        if clip.scene is not None:
            scenes[clip.scene] += 1
    order = {"train": 0, "evaluate": 1, "unused": 2, "test": 3}
    summary = {
        "root": str(dataset.root),
        "kind": "development" if dataset.labeled else "unlabeled",
        "fold": dataset.fold,
        "clips": len(dataset),
        "devices": dataset.devices,
        "splits": {
            name: {device: splits[name][device] for device in sorted(splits[name], key=_device_key)}
            for name in sorted(splits, key=lambda s: order.get(s, 9))
        },
        "scenes": dict(sorted(scenes.items())),
        "parallel_groups": len(dataset.parallel_groups()) if dataset.labeled else 0,
        "parallel_groups_by_split": {
            name: len(dataset.parallel_groups(name)) for name in ("train", "evaluate")
        }
        if dataset.labeled
        else {},
    }
    if check_audio:
        tallies = {key: collections.Counter() for key in ("sample_rates", "channels", "seconds", "bit_depths", "subtypes")}
        clips = dataset.clips
        for clip in each(clips, "checking audio", "file", progress and len(clips) >= PROGRESS_MIN_FILES):
            info = audio_info(dataset.path(clip))
            tallies["sample_rates"][info.sample_rate] += 1
            tallies["channels"][info.channels] += 1
            tallies["seconds"][round(info.seconds, 3)] += 1
            tallies["bit_depths"][info.bit_depth] += 1
            tallies["subtypes"][info.subtype] += 1
        summary["audio"] = {key: {str(k): n for k, n in sorted(c.items(), key=lambda kv: str(kv[0]))}
                            for key, c in tallies.items()}
    return summary


def _device_key(device: str):
    return (device != "a", device)


def format_summary(summary: dict) -> str:
    """The summary as the tables ``python -m asc describe`` prints."""
    devices = sorted({d for counts in summary["splits"].values() for d in counts}, key=_device_key)
    lines = [f"{summary['root']}: {summary['kind']} set"
             + (f", fold {summary['fold']}" if summary["fold"] else "") + f", {summary['clips']} clips", ""]
    width = max([len("split")] + [len(s) for s in summary["splits"]])
    header = f"{'split':<{width}}" + "".join(f"{d:>8}" for d in devices) + f"{'total':>8}"
    lines += [header, "-" * len(header)]
    for name, counts in summary["splits"].items():
        lines.append(f"{name:<{width}}" + "".join(f"{counts.get(d, 0):>8}" for d in devices)
                     + f"{sum(counts.values()):>8}")
    if summary["scenes"]:
        width = max(len(s) for s in summary["scenes"])
        lines += ["", f"{'scene':<{width}}{'clips':>8}"]
        lines += [f"{scene:<{width}}{n:>8}" for scene, n in summary["scenes"].items()]
    if summary["kind"] == "development":
        by_split = ", ".join(f"{k} {v}" for k, v in summary["parallel_groups_by_split"].items())
        lines += ["", f"parallel groups (reference device + another): {summary['parallel_groups']} ({by_split})"]
    if "audio" in summary:
        lines.append("")
        names = {"sample_rates": "sample rate (Hz)", "channels": "channels", "seconds": "duration (s)",
                 "bit_depths": "bit depth", "subtypes": "encoding"}
        for key, name in names.items():
            found = ", ".join(f"{value} x{n}" for value, n in summary["audio"][key].items())
            lines.append(f"{name + ':':<18}{found}")
    return "\n".join(lines)
