"""The project's error types. Each is a problem the user can fix, and its message says how:
the command line reports these in one line (exit status 2), while any other exception is a
bug and keeps its traceback."""


class DiceError(Exception):
    """Base of every error the user can fix."""


class InputError(DiceError, ValueError):
    """A setting, a flag or a file that cannot work as given."""


class DiskFull(DiceError):
    """A write that found no room: a full disk, a quota, or a file-size limit."""

    def __init__(self, path, reason: str):
        super().__init__(
            f"the disk is full: {path} could not be written ({reason}). Nothing half-written is "
            "kept under that name; free some space on that disk and run the same command "
            "again: it continues from where it stopped")
        self.path = path
