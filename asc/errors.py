"""The one error type for problems a user can cause (bad files, bad options), and the checks and the
atomic write that keep a command's output whole.

The command-line entry points catch :class:`AscError` and print its message as a single line;
anything else is a bug and keeps its traceback.
"""

import os
import stat
import sys
import uuid
from pathlib import Path


class AscError(Exception):
    """Bad input: the message names the file (and line) or option at fault and what would be right."""


def run_command(args) -> int:
    """Run a parsed command-line command (``args.run(args)``) as every entry point does: bad input
    (an AscError) becomes one ``error:`` line on stderr and exit status 2; anything else is a bug and
    keeps its traceback."""
    return run_main(lambda: args.run(args))


def writable_folder(path, what: str):
    """``path`` as a folder this process can write into, made if missing; else an AscError naming
    ``what`` (the option) and the path. Called before long work whose output goes there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AscError(f"{what} {path}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AscError(f"{what} {path}: cannot be made ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise AscError(f"{what} {path}: not writable")
    return path


def creatable_folder(path, what: str) -> Path:
    """``path`` as a folder this process could make, or may already write into, checked without
    creating anything (for checks that come before a command writes); else an AscError naming
    ``what`` (the option) and the path."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise AscError(f"{what} {path}: " + ("is a file, not a folder" if existing == path else f"{existing} is a file"))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AscError(f"{what} {path}: {existing} is not writable")
    return path


def writable_file(path, what: str):
    """``path`` as a file this process can (over)write, in a folder that exists; else an AscError
    naming ``what`` and the path. Nothing is created."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise AscError(f"{what} {path}: is a folder, not a file")
    if not folder.is_dir():
        raise AscError(f"{what} {path}: no folder {folder} to write it into")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise AscError(f"{what} {path}: not writable")
    return path


def write_atomic(path, text: str) -> Path:
    """``text`` written to ``path`` aside (a uniquely named file in its folder) and renamed over it:
    a reader, a crash or a second writer never sees it half-written. The file gets the mode a plain
    ``open`` would give it (the umask's; an existing file keeps its own), not mkstemp's 0600."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.partial"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the OS applies the umask
    try:
        with os.fdopen(fd, "w", newline="") as f:
            if path.exists():
                os.fchmod(f.fileno(), stat.S_IMODE(path.stat().st_mode))
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a program Ctrl-C stopped
BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a program whose reader (e.g. `head`) went away


def run_main(main) -> int:
    """``main()`` (returning an exit status or None) as every command runs: AscError becomes one
    ``error:`` line and status 2; Ctrl-C one line and status 130 (the code being interrupted removes
    what it had half-written as the interrupt unwinds it); a closed pipe on stdout (``| head``)
    ends the command quietly."""
    try:
        status = main() or 0
        sys.stdout.flush()  # a reader that went away shows here, not as a warning at exit
        return status
    except AscError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: stopped by Ctrl-C", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # Python's documented remedy: point stdout at /dev/null so that the interpreter's own flush
        # at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
