"""DICE's two 'hands': two depthwise 7x7 convolutions of one input, merged by the paper's
signal-extraction function. Both have hand-written backward passes: in eager mode the CPU
spends a third or more of a DICE step in them, and the autograd graphs they replace take
extra passes over the activations (bench/results/depthwise-cpu.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def signal_extraction(left: torch.Tensor, right: torch.Tensor,
                      lam: torch.Tensor | float) -> torch.Tensor:
    """The paper's 'hands' function f(l, r) = (l + r) / (1 + exp(lambda * (l - r)^2)).

    Written as (l + r) * sigmoid(-lambda * (l - r)^2), which never overflows, and evaluated in
    float32 at least: in fp16, (l - r)^2 overflows to inf from |l - r| > 256, and then the
    gradient with respect to lambda becomes 0 * inf = NaN.
    """
    if not isinstance(lam, torch.Tensor):
        lam = torch.tensor(lam, dtype=torch.promote_types(left.dtype, torch.float32),
                           device=left.device)
    return _SignalExtraction.apply(left, right, lam)


class _SignalExtraction(torch.autograd.Function):
    """f and its gradients from three saved tensors, d = l - r, a = l + r and
    s = sigmoid(-lambda d^2): f = a s, df/dl = s + q, df/dr = s - q with
    q = -2 lambda d a s (1 - s), and df/dlambda = -d^2 a s (1 - s)."""

    @staticmethod
    def forward(ctx, left, right, lam):
        compute = torch.promote_types(left.dtype, torch.float32)
        l, r, lam_c = left.to(compute), right.to(compute), lam.to(compute)
        difference, total = l - r, l + r
        agreement = torch.sigmoid(difference.square().mul_(-lam_c))
        ctx.save_for_backward(difference, total, agreement, lam_c)
        ctx.dtypes = (left.dtype, right.dtype, lam.dtype)
        return (total * agreement).to(left.dtype)

    @staticmethod
    def backward(ctx, grad):
        difference, total, agreement, lam = ctx.saved_tensors
        left_dtype, right_dtype, lam_dtype = ctx.dtypes
        through_sum = grad.to(total.dtype) * agreement
        # d f / d(-lambda d^2), times d
        through_gate = (through_sum * total).mul_(1 - agreement).mul_(difference)
        grad_lam = -(through_gate * difference).sum().reshape(lam.shape)
        through_gate.mul_(-2 * lam)
        return ((through_sum + through_gate).to(left_dtype),
                (through_sum - through_gate).to(right_dtype), grad_lam.to(lam_dtype))


def two_hands(x: torch.Tensor, left: nn.Conv2d, right: nn.Conv2d,
              lam: torch.Tensor) -> torch.Tensor:
    """signal_extraction(left(x), right(x), lam) for channels-last ``x``."""
    padded, pad = _pad_small_maps(x, left.kernel_size[0], left.padding[0])
    return signal_extraction(depthwise(padded, left, pad), depthwise(padded, right, pad), lam)


def _pad_small_maps(x: torch.Tensor, kernel: int, pad: int) -> tuple[torch.Tensor, int]:
    """Zero-pads ``x`` by hand where the CPU's depthwise kernel is slow, and returns the
    padding the convolution itself must still add.

    On the CPU, a depthwise convolution whose input is smaller than its kernel (the 4x4 and
    2x2 maps of a latent-sized DICE) takes a slow path in the backward pass with implicit
    padding, 1.7-3.4x slower than the same convolution on a padded input
    (bench/results/depthwise-cpu.md); on larger maps implicit padding is the faster one.
    """
    if x.device.type == "cpu" and min(x.shape[-2:]) < kernel:
        return F.pad(x, (pad, pad, pad, pad)), 0
    return x, pad


def depthwise(x: torch.Tensor, conv: nn.Conv2d, pad: int) -> torch.Tensor:
    """``conv`` (depthwise, stride 1) of ``x`` with ``pad`` zeros of padding."""
    if x.device.type == "cpu" and torch.is_grad_enabled():
        return _CpuDepthwise.apply(x, conv.weight, conv.bias, pad)
    return F.conv2d(x, conv.weight, conv.bias, padding=pad, groups=conv.groups)


class _CpuDepthwise(torch.autograd.Function):
    """A depthwise convolution whose bias gradient is a plain sum: oneDNN's backward pass
    takes longer over the bias than torch.sum does, so the two hands' forward+backward is
    8-11% faster on dice-t's 8x8 and 32x32 maps (bench/results/depthwise-cpu.md)."""

    @staticmethod
    def forward(ctx, x, weight, bias, pad):
        if torch.is_autocast_enabled("cpu"):     # save what the convolution really used
            dtype = torch.get_autocast_dtype("cpu")
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.pad = pad
        return F.conv2d(x, weight, bias, padding=pad, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [1, 1], [ctx.pad, ctx.pad], [1, 1], False, [0, 0],
            weight.shape[0], [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        grad_bias = grad.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None
