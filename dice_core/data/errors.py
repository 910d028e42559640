"""The one error type of the data layer."""


class DataError(ValueError):
    """A problem with the data that the user must fix; the message says what to do."""
