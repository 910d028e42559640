"""Named presets of every model family: ``build_model(name, **overrides)``."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from dice_core.errors import InputError

# Overrides every preset accepts, whatever its family.
COMMON_OVERRIDES = ("in_channels", "input_size", "num_classes", "class_dropout_prob")


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    builder: Callable[..., nn.Module]
    config: dict[str, Any] = field(default_factory=dict)
    note: str = ""


_PRESETS: dict[str, Preset] = {}


def register_preset(name: str, family: str, builder: Callable[..., nn.Module],
                    note: str = "", **config: Any) -> None:
    if name in _PRESETS:
        raise ValueError(f"model preset {name!r} is registered twice")
    _PRESETS[name] = Preset(name, family, builder, dict(config), note)


def variant_of(name: str) -> str:
    """What an ablation preset changes, by its name's last part after the preset it departs
    from (``dice-t-onehand`` -> ``onehand``); ``base`` for every other preset."""
    base, _, change = name.rpartition("-")
    return change if base in _PRESETS else "base"


def list_models(family: str | None = None) -> list[str]:
    return sorted(name for name, preset in _PRESETS.items()
                  if family is None or preset.family == family)


def get_preset(name: str) -> Preset:
    try:
        return _PRESETS[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}; valid models are: "
                         f"{', '.join(list_models())}") from None


def resolved_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The full keyword set a preset is built from, overrides applied."""
    return {**get_preset(name).config, **overrides}


def builder_defaults(name: str) -> dict[str, Any]:
    """The builder's own keyword defaults: what a field the preset leaves unset is."""
    parameters = inspect.signature(get_preset(name).builder).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build preset ``name``; ``overrides`` replace the preset's keyword arguments
    (``in_channels``, ``input_size``, ``num_classes`` and any architecture field)."""
    preset = get_preset(name)
    config = resolved_config(name, **overrides)
    try:
        model = preset.builder(**config)
    except TypeError as error:
        raise InputError(f"model {name!r} does not accept these overrides: {error}") from None
    except ValueError as error:    # the builder's own check of a setting
        raise InputError(f"model {name!r} cannot be built with {overrides}: {error}") from None
    model.preset_name = name
    model.preset_config = config
    return model
