"""The project's error types. Each is a problem the user can fix, and its message says how:
the command line reports these in one line (exit status 2), while any other exception is a
bug and keeps its traceback."""


class DiceError(Exception):
    """Base of every error the user can fix."""


class InputError(DiceError, ValueError):
    """A setting, a flag or a file that cannot work as given."""
