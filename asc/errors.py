"""The one error type for problems a user can cause (bad files, bad options).

The command-line entry points catch :class:`AscError` and print its message as a single line;
anything else is a bug and keeps its traceback.
"""


class AscError(Exception):
    """Bad input: the message names the file (and line) or option at fault and what would be right."""
