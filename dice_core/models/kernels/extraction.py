"""Signal extraction with a hand-written backward pass: three saved tensors instead of
autograd's graph of the formula, which takes extra passes over the activations
(bench/results/depthwise-cpu.md)."""
from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 at least: in fp16, (l - r)^2 overflows to inf from |l - r| > 256."""
    return torch.promote_types(dtype, torch.float32)


def as_tensor(lam: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    if isinstance(lam, torch.Tensor):
        return lam
    return torch.tensor(lam, dtype=compute_dtype(like.dtype), device=like.device)


def extract(left: torch.Tensor, right: torch.Tensor,
            lam: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """f and the three tensors its gradients are made of: d = l - r, a = l + r and
    s = sigmoid(-lambda d^2), so that f = a s."""
    difference, total = left - right, left + right
    agreement = torch.sigmoid(difference.square().mul_(-lam))
    return total * agreement, (difference, total, agreement)


def extraction_grads(grad: torch.Tensor, difference: torch.Tensor, total: torch.Tensor,
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
        compute = compute_dtype(left.dtype)
        lam_c = lam.to(compute)
        out, saved = extract(left.to(compute), right.to(compute), lam_c)
        ctx.save_for_backward(*saved, lam_c)
        ctx.dtypes = (left.dtype, right.dtype, lam.dtype)
        return out.to(left.dtype)

    @staticmethod
    def backward(ctx, grad):
        difference, total, agreement, lam = ctx.saved_tensors
        grads = extraction_grads(grad.to(total.dtype), difference, total, agreement, lam)
        return tuple(g.to(dtype) for g, dtype in zip(grads, ctx.dtypes))


def fused_signal_extraction(left: torch.Tensor, right: torch.Tensor,
                            lam: torch.Tensor | float) -> torch.Tensor:
    return _SignalExtraction.apply(left, right, as_tensor(lam, left))
