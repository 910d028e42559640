"""The model zoo: DICE and its two baselines behind one registry."""
from . import dice, dimr, dit  # noqa: F401  (registers the presets)
from .compiled import compile_model
from .dice import DICE
from .dimr import DiMR
from .dit import DiT
from .hands import signal_extraction
from .layers import DiffusionBackbone, drop_labels
from .registry import build_model, builder_defaults, get_preset, list_models

__all__ = ["DICE", "DiMR", "DiT", "DiffusionBackbone", "build_model", "builder_defaults",
           "compile_model", "drop_labels", "get_preset", "list_models", "signal_extraction"]
