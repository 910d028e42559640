"""Speed-ups of DICE's plain PyTorch forms (dice_core/models/dice.py), each behind the one
function it replaces.

A function of dice.py marked ``@replaceable`` runs its kernel where the kernel's rule holds
and its own body everywhere else. Each kernel computes the same function as its reference,
forward and gradients (tests/test_kernels.py, with perturbed weights); what it is worth is in
the bench record its module names. ``DICE_KERNELS=0`` in the environment, or
``with disabled():``, runs the plain reference model.
"""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .dense_hands import dense_two_hands
from .depthwise import cpu_depthwise
from .extraction import fused_signal_extraction
from .folded_mlp import folded_modulated_mlp

_state = {"enabled": os.environ.get("DICE_KERNELS", "1") != "0"}


@dataclass(frozen=True)
class Kernel:
    """``run`` in place of the reference wherever ``rule`` (given the same arguments) holds."""
    rule: Callable[..., bool]
    run: Callable


def training_on_cpu(x: torch.Tensor, *_) -> bool:
    return x.device.type == "cpu" and torch.is_grad_enabled()


def with_autograd(*_) -> bool:
    return torch.is_grad_enabled()


def training_on_cpu_below_kernel_size(x: torch.Tensor, left: torch.nn.Conv2d, *_) -> bool:
    return training_on_cpu(x) and min(x.shape[-2:]) < left.kernel_size[0]


def more_pixels_than_mlp_width(mlp: torch.nn.Sequential, x: torch.Tensor, *_) -> bool:
    """For channels-last ``x`` (B, H, W, C)."""
    return x.shape[1] * x.shape[2] > mlp[0].out_features


KERNELS = {"signal_extraction": Kernel(with_autograd, fused_signal_extraction),
           "depthwise": Kernel(training_on_cpu, cpu_depthwise),
           "two_hands": Kernel(training_on_cpu_below_kernel_size, dense_two_hands),
           "modulated_mlp": Kernel(more_pixels_than_mlp_width, folded_modulated_mlp)}


def enabled() -> bool:
    return _state["enabled"]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Runs the reference forms inside (a backward pass follows what its forward took)."""
    before, _state["enabled"] = _state["enabled"], False
    try:
        yield
    finally:
        _state["enabled"] = before


def replaceable(reference: Callable) -> Callable:
    """``reference``, or the kernel registered under its name where that kernel's rule holds.
    The reference stays reachable as ``.reference``, the kernel as ``.kernel``."""
    kernel = KERNELS[reference.__name__]

    @functools.wraps(reference)
    def dispatch(*args):
        if _state["enabled"] and kernel.rule(*args):
            return kernel.run(*args)
        return reference(*args)
    dispatch.reference, dispatch.kernel = reference, kernel
    return dispatch
