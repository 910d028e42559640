"""A CPU depthwise convolution whose backward pass keeps the input's memory layout and sums
the bias gradient with torch.sum, which is faster than oneDNN's (bench/results/depthwise-cpu.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def memory_format(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def autocast_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a CPU convolution really computes in: autocast's, where it is on."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else dtype


class _CpuDepthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, pad):
        dtype = autocast_dtype(x.dtype)          # save what the convolution really used
        x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.pad = pad
        return F.conv2d(x, weight, bias, padding=pad, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x, grad_weight = depthwise_backward(grad, x, weight, ctx.pad)
        grad_bias = grad.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
        return (grad_x if ctx.needs_input_grad[0] else None,
                grad_weight if ctx.needs_input_grad[1] else None, grad_bias, None)


@torch.library.custom_op("dice::depthwise_backward", mutates_args=())
def depthwise_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and weight gradients of a depthwise stride-1 convolution, in ``x``'s layout.

    An op of its own so that torch.compile keeps the layouts it was traced with: inlined, the
    compiled backward handed oneDNN NCHW copies, whose depthwise backward is the slow one."""
    layout = memory_format(x)
    grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad.contiguous(memory_format=layout), x, weight, None, [1, 1], [pad, pad], [1, 1],
        False, [0, 0], weight.shape[0], [True, True, False])
    return grad_x.contiguous(memory_format=layout), grad_weight.contiguous()


@depthwise_backward.register_fake
def _(grad, x, weight, pad):
    return (torch.empty_like(x, memory_format=memory_format(x)),
            torch.empty_like(weight, memory_format=torch.contiguous_format))


def cpu_depthwise(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return _CpuDepthwise.apply(x, conv.weight, conv.bias, conv.padding[0])
