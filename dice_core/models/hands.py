"""DICE's two 'hands': two depthwise 7x7 convolutions of one input, merged by the paper's
signal-extraction function. On the CPU both have hand-written backward passes: in eager
mode the CPU spends a third or more of a DICE step in them, and the autograd graphs they
replace take extra passes over the activations (bench/results/depthwise-cpu.md).
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
    return _SignalExtraction.apply(left, right, _as_tensor(lam, left))


def _as_tensor(lam: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    if isinstance(lam, torch.Tensor):
        return lam
    return torch.tensor(lam, dtype=_compute_dtype(like.dtype), device=like.device)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _extract(left: torch.Tensor, right: torch.Tensor,
             lam: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """f and the three tensors its gradients are made of: d = l - r, a = l + r and
    s = sigmoid(-lambda d^2), so that f = a s."""
    difference, total = left - right, left + right
    agreement = torch.sigmoid(difference.square().mul_(-lam))
    return total * agreement, (difference, total, agreement)


def _extraction_grads(grad: torch.Tensor, difference: torch.Tensor, total: torch.Tensor,
                      agreement: torch.Tensor, lam: torch.Tensor) -> tuple:
    """df/dl = s + q, df/dr = s - q with q = -2 lambda d a s (1 - s), and
    df/dlambda = -d^2 a s (1 - s), each times ``grad``."""
    through_sum = grad * agreement
    # d f / d(-lambda d^2), times d
    through_gate = (through_sum * total).mul_(1 - agreement).mul_(difference)
    grad_lam = -(through_gate * difference).sum().reshape(lam.shape)
    through_gate.mul_(-2 * lam)
    return through_sum + through_gate, through_sum - through_gate, grad_lam


class _SignalExtraction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, left, right, lam):
        compute = _compute_dtype(left.dtype)
        lam_c = lam.to(compute)
        out, saved = _extract(left.to(compute), right.to(compute), lam_c)
        ctx.save_for_backward(*saved, lam_c)
        ctx.dtypes = (left.dtype, right.dtype, lam.dtype)
        return out.to(left.dtype)

    @staticmethod
    def backward(ctx, grad):
        difference, total, agreement, lam = ctx.saved_tensors
        grads = _extraction_grads(grad.to(total.dtype), difference, total, agreement, lam)
        return tuple(g.to(dtype) for g, dtype in zip(grads, ctx.dtypes))


def two_hands(x: torch.Tensor, left: nn.Conv2d, right: nn.Conv2d,
              lam: torch.Tensor) -> torch.Tensor:
    """signal_extraction(left(x), right(x), lam) for channels-last ``x``.

    On the CPU with autograd, a map smaller than the kernel (the 4x4 and 2x2 maps of a
    latent-sized DICE) goes through ``_DenseHands``, 3.6-11x faster there forward+backward than
    the convolutions with implicit padding. The forward pass alone (sampling) is faster as convolutions, so it stays
    one (bench/results/depthwise-cpu.md); the two agree to float32 rounding.
    """
    if (x.device.type == "cpu" and torch.is_grad_enabled()
            and min(x.shape[-2:]) < left.kernel_size[0]):
        return _DenseHands.apply(x, left.weight, left.bias, right.weight, right.bias,
                                 left.padding[0], _as_tensor(lam, x))
    return signal_extraction(depthwise(x, left), depthwise(x, right), lam)


def depthwise(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv`` (depthwise, stride 1) of ``x``."""
    if x.device.type == "cpu" and torch.is_grad_enabled():
        return _CpuDepthwise.apply(x, conv.weight, conv.bias, conv.padding[0])
    return F.conv2d(x, conv.weight, conv.bias, padding=conv.padding, groups=conv.groups)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def _autocast_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a CPU convolution really computes in: autocast's, where it is on."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else dtype


class _CpuDepthwise(torch.autograd.Function):
    """A depthwise convolution whose bias gradient is a plain sum: oneDNN's backward pass
    takes longer over the bias than torch.sum does: the two hands' forward+backward takes
    0.77-0.99x the time on dice-t's 8x8 and 32x32 maps (bench/results/depthwise-cpu.md)."""

    @staticmethod
    def forward(ctx, x, weight, bias, pad):
        dtype = _autocast_dtype(x.dtype)          # save what the convolution really used
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
    compiled backward handed oneDNN NCHW copies, whose depthwise backward is the slow one
    (compiled dice-t ran slower than eager)."""
    layout = _memory_format(x)
    grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad.contiguous(memory_format=layout), x, weight, None, [1, 1], [pad, pad], [1, 1],
        False, [0, 0], weight.shape[0], [True, True, False])
    return grad_x.contiguous(memory_format=layout), grad_weight.contiguous()


@depthwise_backward.register_fake
def _(grad, x, weight, pad):
    return (torch.empty_like(x, memory_format=_memory_format(x)),
            torch.empty_like(weight, memory_format=torch.contiguous_format))


def _tap_index(height: int, width: int, kernel: int, pad: int) -> torch.Tensor:
    """(P, P) for P = height * width pixels: entry [p, q] is the kernel tap (row-major) that
    takes input pixel p to output pixel q in a stride-1 convolution, or -1 where p is out of
    the kernel's reach of q."""
    rows, cols = torch.arange(height), torch.arange(width)
    tap_row = rows[:, None, None, None] - rows[None, None, :, None] + pad
    tap_col = cols[None, :, None, None] - cols[None, None, None, :] + pad
    reach = (tap_row >= 0) & (tap_row < kernel) & (tap_col >= 0) & (tap_col < kernel)
    return torch.where(reach, tap_row * kernel + tap_col, -1).view(height * width, -1)


def _two_hands_index(height: int, width: int, kernel: int, pad: int) -> torch.Tensor:
    """(P, 2P) into [left taps, right taps, 0]: both hands' matrices side by side."""
    one = _tap_index(height, width, kernel, pad)
    out_of_reach = 2 * kernel * kernel
    return torch.cat([one.where(one >= 0, out_of_reach),
                      (one + kernel * kernel).where(one >= 0, out_of_reach)], 1)


def _to_channel_major(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) to a contiguous (C, N, H*W): one 2-D transpose of a channels-last map."""
    n, c = x.shape[:2]
    return x.permute(0, 2, 3, 1).reshape(-1, c).t().contiguous().view(c, n, -1)


def _from_channel_major(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``_to_channel_major``'s inverse, channels-last."""
    c, n = x.shape[:2]
    return x.view(c, -1).t().contiguous().view(n, height, width, c).permute(0, 3, 1, 2)


class _DenseHands(torch.autograd.Function):
    """Both hands and signal extraction, each channel's two convolutions as one (P, 2P)
    matrix applied by a batched matmul over the channels. On dice-t's 4x4 and 2x2 maps this
    is 0.3-0.6x the time of the convolutions (padded by hand) forward+backward; on 8x8 and
    larger maps it is slower at batch 16, because the matrix grows as P^2 while the kernel
    stays 7x7 (bench/results/depthwise-cpu.md).
    """

    @staticmethod
    def forward(ctx, x, left_weight, left_bias, right_weight, right_bias, pad, lam):
        n, c, height, width = x.shape
        dtype, compute = _autocast_dtype(x.dtype), _compute_dtype(x.dtype)
        taps = left_weight[0].numel()
        index = _two_hands_index(height, width, left_weight.shape[-1], pad)
        weights = torch.cat([left_weight.view(c, taps), right_weight.view(c, taps),
                             left_weight.new_zeros(c, 1)], 1).to(dtype)
        matrices = weights[:, index]                               # (C, P in, 2P out)
        pixels = _to_channel_major(x.to(dtype))                    # (C, N, P)
        both = torch.bmm(pixels, matrices).view(c, n, 2, -1)
        both += torch.stack([left_bias, right_bias], 1).to(dtype).view(c, 1, 2, 1)
        lam_c = lam.to(compute)
        out, saved = _extract(both[:, :, 0].to(compute), both[:, :, 1].to(compute), lam_c)
        ctx.save_for_backward(pixels, matrices, index, *saved, lam_c)
        ctx.dtypes = (x.dtype, left_weight.dtype, left_bias.dtype, lam.dtype)
        ctx.taps, ctx.kernel, ctx.map_size = taps, tuple(left_weight.shape[-2:]), (height, width)
        return _from_channel_major(out.to(x.dtype), height, width)

    @staticmethod
    def backward(ctx, grad):
        pixels, matrices, index, difference, total, agreement, lam = ctx.saved_tensors
        x_dtype, weight_dtype, bias_dtype, lam_dtype = ctx.dtypes
        c, n, p = pixels.shape
        grad_left, grad_right, grad_lam = _extraction_grads(
            _to_channel_major(grad).to(total.dtype), difference, total, agreement, lam)
        grad_both = torch.cat([grad_left, grad_right], -1).to(pixels.dtype)   # (C, N, 2P)
        grad_x = torch.bmm(grad_both, matrices.transpose(1, 2))           # (C, N, P)
        grad_matrices = torch.bmm(pixels.transpose(1, 2), grad_both)      # (C, P, 2P)
        grad_weights = grad_matrices.new_zeros(c, 2 * ctx.taps + 1).index_add_(
            1, index.flatten(), grad_matrices.view(c, -1)).to(weight_dtype)
        grad_bias = grad_both.view(c, n, 2, p).sum((1, 3)).to(bias_dtype)
        kernel = (c, 1) + ctx.kernel
        return (_from_channel_major(grad_x.to(x_dtype), *ctx.map_size),
                grad_weights[:, :ctx.taps].reshape(kernel), grad_bias[:, 0],
                grad_weights[:, ctx.taps:-1].reshape(kernel), grad_bias[:, 1], None,
                grad_lam.to(lam_dtype))
