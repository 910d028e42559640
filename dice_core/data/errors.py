"""The one error type of the data layer."""
from dice_core.errors import InputError


class DataError(InputError):
    """A problem with the data that the user must fix; the message says what to do."""
