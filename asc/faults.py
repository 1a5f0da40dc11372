"""Named fault points: where a test stops a process on purpose, at the moment it chose.

Long work calls :func:`fault_point` at the moments a crash matters: half-way through an epoch, one
seed of a lockstep an epoch ahead of the other, a checkpoint half written, a trial just started or
just reported, a store shard written. Normally the call returns at once (one environment lookup and
nothing else). When the environment variable ``ASC_FAULT_POINTS`` names the point, the first process
that reaches it publishes a marker file in ``ASC_FAULT_DIR`` (JSON: its pid, host and the point) and
pauses there until it is killed. A test waits for the marker, then kills that process, its Ray node or
its driver by process id: the kill lands exactly there however busy the machine is, with no sleep
standing in for the moment. A point fires once: a retried or resumed process finds the marker and
goes on.

Names are the point and its place, ``step/seed=1/epoch=2/step=3`` (:func:`fault_name`), after the
process's context when it has one (a search's trial sets ``trial=t002``: ``trial=t002/step/...``).
``ASC_FAULT_POINTS`` is a comma-separated list of names or shell-style patterns
(``reported/trial=*/epoch=1``: whichever trial gets there first). A paused process goes on by itself after
``ASC_FAULT_PAUSE_S`` seconds (600), or at once when a file ``<marker>.release`` appears, so that a test
that fails never leaves it behind for good.

:func:`injected` is the other kind of fault: true wherever ``ASC_FAULT_INJECT`` names the point (every
time, no marker, no pause), for a fault the code then makes itself (a non-finite training loss).
"""

from __future__ import annotations

import fnmatch
import json
import os
import socket
import time
from pathlib import Path

POINTS_ENV = "ASC_FAULT_POINTS"
INJECT_ENV = "ASC_FAULT_INJECT"  # names (or patterns) where injected() is true, every time
DIR_ENV = "ASC_FAULT_DIR"
PAUSE_ENV = "ASC_FAULT_PAUSE_S"


_CONTEXT = ""


def set_fault_context(context: str) -> None:
    """What every point's name starts with in this process from now on (``trial=t002``)."""
    global _CONTEXT
    _CONTEXT = context


def fault_name(point: str, **where) -> str:
    """``[context/]step/seed=1/epoch=2``: the context, the point, then where it is, in the order given."""
    return (f"{_CONTEXT}/" if _CONTEXT else "") + point + "".join(f"/{key}={value}" for key, value in where.items())


def marker_path(folder: str | Path, pattern: str) -> Path:
    """The marker file of the armed name or pattern ``pattern`` in ``folder`` (one per pattern: it
    fires once, wherever it matched first; the marker names the point that fired)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in pattern)
    return Path(folder) / f"{safe}.json"


def fault_point(point: str, **where) -> None:
    """Pause here if a test armed this point (see the module docstring); else return at once."""
    armed = os.environ.get(POINTS_ENV)
    if not armed:
        return
    name = fault_name(point, **where)
    pattern = next((p for p in armed.split(",") if fnmatch.fnmatchcase(name, p)), None)
    if pattern is None:
        return
    marker = marker_path(os.environ[DIR_ENV], pattern)
    tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"point": name, "pid": os.getpid(), "host": socket.gethostname(),
                               "time": time.time()}))
    try:
        os.link(tmp, marker)  # atomic and exclusive: one process fires the point, whole marker or none
    except FileExistsError:
        return  # fired before (this is the retry that must go on)
    finally:
        tmp.unlink(missing_ok=True)
    deadline = time.monotonic() + float(os.environ.get(PAUSE_ENV, "600"))
    release = marker.with_name(marker.name + ".release")
    while time.monotonic() < deadline and not release.exists():
        time.sleep(0.05)


def injected(point: str, **where) -> bool:
    """Whether a test asked for a fault at this point (see the module docstring); false at once
    otherwise (one environment lookup)."""
    armed = os.environ.get(INJECT_ENV)
    if not armed:
        return False
    name = fault_name(point, **where)
    return any(fnmatch.fnmatchcase(name, p) for p in armed.split(","))
