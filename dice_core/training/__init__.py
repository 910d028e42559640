"""The training engine: one loop for every model, DeepSpeed inside, locally or on Ray Train.

The names below are imported when first used: the engine's own modules (engine, layout,
optim, steps) then load without the loop's tracking, data and evaluation stacks, which the
GPU benchmark's machine does not have."""
from importlib import import_module

_HOMES = {"BatchLayout": "layout", "batch_layout": "layout",
          "CheckpointMismatch": "checkpoint", "CheckpointStore": "checkpoint",
          "ema_weights_path": "checkpoint", "NonFiniteLoss": "errors",
          "RunFolderInUse": "run_lock", "Placement": "session", "train_model": "loop"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
