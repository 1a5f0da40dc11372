"""What a search prints, and where Ray's own messages go: the search's log file, not the console.

A lost worker makes Ray print three messages of several hundred characters each (the raylet's "a
worker died", the Tune controller's traceback of the failed task, the actor's exit detail), a lost
node more, and a trial's worker prints whatever its libraries print (a warning, a traceback as Ray
terminates it). The search prints one line per event of its own (``search.tuner``'s progress
callback; a trial's own lines through :func:`say`) and keeps everything else, whole, in
``STORAGE/NAME/ray.log`` for those who need it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

try:  # Ray's internals (see route_ray_messages): another Ray than requirements.txt's may lack them
    import ray._private.worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
except ImportError:
    ray_worker = dispatcher = None

LOG_FILE = "ray.log"
SAY = "[asc] "  # a trial worker's line that starts with this is the project's own, for the console


def say(line: str) -> None:
    """Print ``line`` from inside a trial so that the search's console shows it (as ``line``)."""
    print(SAY + line, flush=True)


class _RayLog:
    """Appends Ray's messages to one file, each with a timestamp and where it came from."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, source: str, lines) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a") as f:
            for line in lines:
                f.write(f"{stamp} ({source}) {line}\n")


def route_ray_messages(search_dir: Path) -> Path:
    """From now on in this driver: Ray Tune's log records, the messages Ray's error channel pushes to
    the driver (worker and node deaths) and what trial workers print go to ``search_dir/ray.log``;
    only a worker's lines made by :func:`say` are printed. Returns the log's path.

    Ray has no setting for this (``log_to_driver`` is all or nothing, and does not cover the error
    channel). Its listener thread prints through ``ray._private.worker.print_to_stdstream`` and the
    workers' output reaches the driver through ``ray._private.ray_logging``'s dispatcher (Ray 2.60):
    the first is wrapped here, and the dispatcher's printing handler is replaced by one that files.
    """
    path = Path(search_dir) / LOG_FILE
    if not all(hasattr(m, a) for m, a in ((ray_worker, "print_to_stdstream"), (dispatcher, "add_handler"),
                                          (dispatcher, "remove_handler"))):
        import ray

        print(f"note: Ray {ray.__version__} lacks the internals by which this version files Ray's messages "
              f"(Ray 2.60's): they stay on the console, and {path} is not written")
        return path
    log = _RayLog(path)
    printer = getattr(ray_worker.print_to_stdstream, "_asc_original", ray_worker.print_to_stdstream)

    def errors(data, ignore_prefix):
        if data.get("pid") == "raylet":
            log.write("raylet", data.get("lines", []))
        else:
            printer(data, ignore_prefix)

    errors._asc_original = printer
    ray_worker.print_to_stdstream = errors

    def workers(data):
        lines = data.get("lines", [])
        log.write(f"{data.get('actor_name') or data.get('task_name') or 'worker'} pid={data.get('pid')}", lines)
        for line in lines:
            if line.startswith(SAY):
                print(line[len(SAY):], flush=True)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler("asc_search_log")
    dispatcher.add_handler("asc_search_log", workers)

    tune_logger = logging.getLogger("ray.tune")
    for handler in [h for h in tune_logger.handlers if getattr(h, "_asc_search_log", False)]:
        tune_logger.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s (%(name)s) %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler._asc_search_log = True
    tune_logger.addHandler(handler)
    tune_logger.propagate = False  # Ray's console handler sits on the "ray" logger above
    return path
