"""The training engine: one loop for every model, DeepSpeed inside, locally or on Ray Train."""
from .checkpoint import CheckpointMismatch, CheckpointStore, ema_weights_path
from .errors import NonFiniteLoss
from .layout import BatchLayout, batch_layout
from .loop import train_model
from .run_lock import RunFolderInUse
from .session import Placement

__all__ = ["BatchLayout", "CheckpointMismatch", "CheckpointStore", "NonFiniteLoss",
           "RunFolderInUse", "Placement", "batch_layout", "ema_weights_path", "train_model"]
