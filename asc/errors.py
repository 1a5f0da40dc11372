"""The one error type for problems a user can cause (bad files, bad options).

The command-line entry points catch :class:`AscError` and print its message as a single line;
anything else is a bug and keeps its traceback.
"""


class AscError(Exception):
    """Bad input: the message names the file (and line) or option at fault and what would be right."""


def run_command(args) -> int:
    """Run a parsed command-line command (``args.run(args)``) as every entry point does: bad input
    (an AscError) becomes one ``error:`` line on stderr and exit status 2; anything else is a bug and
    keeps its traceback."""
    return run_main(lambda: args.run(args))


def run_main(main) -> int:
    """``main()`` (returning an exit status or None) with AscError turned into one line and status 2."""
    import sys

    try:
        return main() or 0
    except AscError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
