"""The error types of the metrics layer: each one a problem the user must fix."""
from dice_core.errors import InputError


class MetricsError(InputError):
    """Base of the metrics errors; the message says what is wrong and what to do."""


class FeatureNetworkError(MetricsError):
    """A feature network's weights cannot be found or loaded."""


class ReferenceMismatchError(MetricsError):
    """Reference statistics were made for another setting (network, resolution, encoder...)."""


class SampleError(MetricsError):
    """A sample set that cannot be evaluated (non-finite values, wrong dtype or shape)."""
