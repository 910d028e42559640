"""The model zoo: DICE and its two baselines behind one registry."""
from . import dice, dimr, dit, kernels  # noqa: F401  (dice, dimr, dit register the presets)
from .compiled import compile_model
from .dice import DICE, signal_extraction
from .dimr import DiMR
from .dit import DiT
from .layers import DiffusionBackbone, drop_labels
from .registry import build_model, builder_defaults, get_preset, list_models, variant_of

__all__ = ["DICE", "DiMR", "DiT", "DiffusionBackbone", "build_model", "builder_defaults",
           "compile_model", "drop_labels", "get_preset", "kernels", "list_models",
           "signal_extraction", "variant_of"]
