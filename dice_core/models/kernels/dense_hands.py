"""Both hands and signal extraction on a map smaller than the kernel: each channel's two
convolutions become one dense (P, 2P) matrix for P pixels, applied by a batched matmul over
the channels. The matrix grows as P^2 while the kernel stays 7x7, so this pays only on small
maps (bench/results/depthwise-cpu.md).
"""
from __future__ import annotations

import torch
from torch import nn

from .depthwise import autocast_dtype
from .extraction import as_tensor, compute_dtype, extract, extraction_grads


def tap_index(height: int, width: int, kernel: int, pad: int) -> torch.Tensor:
    """(P, P) for P = height * width pixels: entry [p, q] is the kernel tap (row-major) that
    takes input pixel p to output pixel q in a stride-1 convolution, or -1 where p is out of
    the kernel's reach of q."""
    rows, cols = torch.arange(height), torch.arange(width)
    tap_row = rows[:, None, None, None] - rows[None, None, :, None] + pad
    tap_col = cols[None, :, None, None] - cols[None, None, None, :] + pad
    reach = (tap_row >= 0) & (tap_row < kernel) & (tap_col >= 0) & (tap_col < kernel)
    return torch.where(reach, tap_row * kernel + tap_col, -1).view(height * width, -1)


def two_hands_index(height: int, width: int, kernel: int, pad: int) -> torch.Tensor:
    """(P, 2P) into [left taps, right taps, 0]: both hands' matrices side by side."""
    one = tap_index(height, width, kernel, pad)
    out_of_reach = 2 * kernel * kernel
    return torch.cat([one.where(one >= 0, out_of_reach),
                      (one + kernel * kernel).where(one >= 0, out_of_reach)], 1)


def to_channel_major(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) to a contiguous (C, N, H*W): one 2-D transpose of a channels-last map."""
    n, c = x.shape[:2]
    return x.permute(0, 2, 3, 1).reshape(-1, c).t().contiguous().view(c, n, -1)


def from_channel_major(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``to_channel_major``'s inverse, channels-last."""
    c, n = x.shape[:2]
    return x.view(c, -1).t().contiguous().view(n, height, width, c).permute(0, 3, 1, 2)


class _DenseHands(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, left_weight, left_bias, right_weight, right_bias, pad, lam):
        n, c, height, width = x.shape
        dtype, compute = autocast_dtype(x.dtype), compute_dtype(x.dtype)
        taps = left_weight[0].numel()
        index = two_hands_index(height, width, left_weight.shape[-1], pad)
        weights = torch.cat([left_weight.view(c, taps), right_weight.view(c, taps),
                             left_weight.new_zeros(c, 1)], 1).to(dtype)
        matrices = weights[:, index]                               # (C, P in, 2P out)
        pixels = to_channel_major(x.to(dtype))                     # (C, N, P)
        both = torch.bmm(pixels, matrices).view(c, n, 2, -1)
        both += torch.stack([left_bias, right_bias], 1).to(dtype).view(c, 1, 2, 1)
        lam_c = lam.to(compute)
        out, saved = extract(both[:, :, 0].to(compute), both[:, :, 1].to(compute), lam_c)
        ctx.save_for_backward(pixels, matrices, index, *saved, lam_c)
        ctx.dtypes = (x.dtype, left_weight.dtype, left_bias.dtype, lam.dtype)
        ctx.taps, ctx.kernel, ctx.map_size = taps, tuple(left_weight.shape[-2:]), (height, width)
        return from_channel_major(out.to(x.dtype), height, width)

    @staticmethod
    def backward(ctx, grad):
        pixels, matrices, index, difference, total, agreement, lam = ctx.saved_tensors
        x_dtype, weight_dtype, bias_dtype, lam_dtype = ctx.dtypes
        c, n, p = pixels.shape
        grad_left, grad_right, grad_lam = extraction_grads(
            to_channel_major(grad).to(total.dtype), difference, total, agreement, lam)
        grad_both = torch.cat([grad_left, grad_right], -1).to(pixels.dtype)   # (C, N, 2P)
        grad_x = torch.bmm(grad_both, matrices.transpose(1, 2))           # (C, N, P)
        grad_matrices = torch.bmm(pixels.transpose(1, 2), grad_both)      # (C, P, 2P)
        grad_weights = grad_matrices.new_zeros(c, 2 * ctx.taps + 1).index_add_(
            1, index.flatten(), grad_matrices.view(c, -1)).to(weight_dtype)
        grad_bias = grad_both.view(c, n, 2, p).sum((1, 3)).to(bias_dtype)
        kernel = (c, 1) + ctx.kernel
        return (from_channel_major(grad_x.to(x_dtype), *ctx.map_size),
                grad_weights[:, :ctx.taps].reshape(kernel), grad_bias[:, 0],
                grad_weights[:, ctx.taps:-1].reshape(kernel), grad_bias[:, 1], None,
                grad_lam.to(lam_dtype))


def dense_two_hands(x: torch.Tensor, left: nn.Conv2d, right: nn.Conv2d,
                    lam: torch.Tensor | float) -> torch.Tensor:
    return _DenseHands.apply(x, left.weight, left.bias, right.weight, right.bias,
                             left.padding[0], as_tensor(lam, x))
