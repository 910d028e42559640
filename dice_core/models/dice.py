"""DICE: an attention-free cascade of ConvNeXt stages (DESIGN.md section 2).

Three stages run at 1x, 1/2x and 1/4x of the latent's resolution, lowest first. Each stage
predicts noise (plus learned-variance channels) at its resolution; the next finer stage sees
the noisy latent with that prediction, upsampled and gated by the conditioning, taken out.

The functions marked ``@kernels.replaceable`` are the model as written; ``kernels/`` holds
their faster equivalents and the rule for when each is taken (``DICE_KERNELS=0``: none is).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .layers import (DiffusionBackbone, LabelEmbedder, TimestepEmbedder, init_normal_,
                     modulate, require_divisible, zero_)
from .registry import register_preset


@kernels.replaceable
def signal_extraction(left: torch.Tensor, right: torch.Tensor,
                      lam: torch.Tensor | float) -> torch.Tensor:
    """The hands' merge (section 3.2): f(l, r) = (l + r) / (1 + exp((l - r)^2 lambda)).

    Written as (l + r) * sigmoid(-lambda (l - r)^2), the same function, which never overflows,
    and computed in float32 at least: in fp16, (l - r)^2 overflows to inf from |l - r| > 256.
    """
    dtype, compute = left.dtype, torch.promote_types(left.dtype, torch.float32)
    left, right = left.to(compute), right.to(compute)
    lam = lam.to(compute) if isinstance(lam, torch.Tensor) else lam
    return ((left + right) * torch.sigmoid(-lam * (left - right).square())).to(dtype)


@kernels.replaceable
def depthwise(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return conv(x)


@kernels.replaceable
def two_hands(x: torch.Tensor, left: nn.Conv2d, right: nn.Conv2d,
              lam: torch.Tensor | float) -> torch.Tensor:
    """Two depthwise 7x7 convolutions of one input, merged by signal extraction."""
    return signal_extraction(depthwise(x, left), depthwise(x, right), lam)


@kernels.replaceable
def modulated_mlp(mlp: nn.Sequential, x: torch.Tensor, shift: torch.Tensor,
                  scale: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``gate * mlp(modulate(x, shift, scale))`` for channels-last ``x`` (B, H, W, C):
    adaLN-Zero conditioning, as in DiT."""
    return gate[:, None, None, :] * mlp(modulate(x, shift, scale))


class DiceBlock(nn.Module):
    """ConvNeXt block with two depthwise 7x7 'hands' and adaLN-Zero conditioning."""

    def __init__(self, channels: int, cond_size: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.dwconv_left = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.dwconv_right = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        # shape (1,), not a scalar: DeepSpeed broadcasts parameters as byte views, which a
        # 0-dim half-precision tensor cannot give
        self.lam = nn.Parameter(torch.ones(1))
        self.norm = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(),
                                 nn.Linear(hidden, channels))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_size, 3 * channels))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=1)
        s = two_hands(x, self.dwconv_left, self.dwconv_right, self.lam)
        h = modulated_mlp(self.mlp, self.norm(s.permute(0, 2, 3, 1)), shift, scale, gate)
        return x + h.permute(0, 3, 1, 2)


class DiceStage(nn.Module):
    """1x1 stem from the latent to the stage width, DICE blocks, and a prediction head."""

    def __init__(self, in_channels: int, width: int, depth: int, cond_size: int,
                 mlp_ratio: float):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 1)
        self.blocks = nn.ModuleList(DiceBlock(width, cond_size, mlp_ratio) for _ in range(depth))
        self.head_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.head = nn.Linear(width, 2 * in_channels)


class DICE(DiffusionBackbone):
    """Stages are listed finest first (stage 1 at full resolution); the cascade runs coarsest
    first. ``cond_size`` is the conditioning width D; stage k has width ``width_multipliers[k]
    * D``."""

    def __init__(self, in_channels: int = 4, input_size: int = 32, num_classes: int = 1000,
                 class_dropout_prob: float = 0.1, cond_size: int = 1152,
                 width_multipliers: Sequence[int] = (1, 2, 3), depths: Sequence[int] = (6, 2, 1),
                 mlp_ratio: float = 2.0, stage_loss_weights: Sequence[float] = (1.0,),
                 init_std: float = 0.02):
        super().__init__(in_channels, input_size, num_classes, class_dropout_prob)
        if len(width_multipliers) != len(depths):
            raise ValueError(f"DICE needs one width multiplier per stage: got "
                             f"{len(width_multipliers)} multipliers and {len(depths)} depths")
        self.num_stages = len(depths)
        require_divisible("DICE", input_size, 2 ** (self.num_stages - 1),
                          f"{self.num_stages} stages halve the resolution "
                          f"{self.num_stages - 1} times")
        if not 1 <= len(stage_loss_weights) <= self.num_stages:
            raise ValueError(f"stage_loss_weights needs 1 to {self.num_stages} entries, got "
                             f"{len(stage_loss_weights)}")
        self.stage_loss_weights = tuple(stage_loss_weights)
        self.t_embedder = TimestepEmbedder(cond_size)
        self.y_embedder = LabelEmbedder(num_classes, cond_size, class_dropout_prob)
        self.stages = nn.ModuleList(
            DiceStage(in_channels, m * cond_size, depth, cond_size, mlp_ratio)
            for m, depth in zip(width_multipliers, depths))
        # g_k(c): per-channel gate on the coarser stage's upsampled noise prediction, one for
        # every stage that has a coarser stage below it. It starts at g = 1, not 0: with both
        # the heads and the gates at zero, the coarser head's gradient (through g) and the
        # gate's gradient (through the coarser prediction) would both stay zero forever.
        self.cascade_gates = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(cond_size, in_channels))
            for _ in range(self.num_stages - 1))
        self.initialize_weights(init_std)

    def initialize_weights(self, std: float) -> None:
        init_normal_(self, std)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=std)
        zero_([block.adaLN_modulation for stage in self.stages for block in stage.blocks])
        zero_([stage.head for stage in self.stages])
        for gate in self.cascade_gates:
            nn.init.zeros_(gate[1].weight)
            nn.init.ones_(gate[1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x, t, y)[0]

    def forward_stages(self, x: torch.Tensor, t: torch.Tensor,
                       y: torch.Tensor) -> list[torch.Tensor]:
        """Predictions of every stage, finest first (the first is the model's output)."""
        self.check_input(x)
        c = self.t_embedder(t) + self.y_embedder(y)
        predictions: list[torch.Tensor] = []
        for k in reversed(range(self.num_stages)):
            x_k = F.avg_pool2d(x, 2 ** k) if k else x
            if predictions:
                coarser_eps = predictions[-1][:, :self.in_channels]
                gate = self.cascade_gates[k](c)[:, :, None, None]
                x_k = x_k - gate * F.interpolate(coarser_eps, scale_factor=2, mode="nearest")
            predictions.append(self._run_stage(self.stages[k], x_k, c))
        return predictions[::-1]

    def _run_stage(self, stage: DiceStage, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # channels-last, so that the permutes to (B, H, W, C) around LayerNorm and the MLP
        # are views, not copies
        h = stage.stem(x).contiguous(memory_format=torch.channels_last)
        for block in stage.blocks:
            h = self.run_block(block, h, c)
        h = stage.head(stage.head_norm(h.permute(0, 2, 3, 1)))
        return h.permute(0, 3, 1, 2)


def _register(name: str, cond_size: int, note: str, **extra) -> None:
    register_preset(name, "dice", DICE, note=note, cond_size=cond_size, **extra)


_register("dice-xl", 1152, "the paper's model: widths 1152/2304/3456, depths 6/2/1")
_register("dice-l", 768, "widths 768/1536/2304, depths 6/2/1")
_register("dice-b", 512, "widths 512/1024/1536, depths 6/2/1")
_register("dice-s", 256, "widths 256/512/768, depths 6/2/1")
_register("dice-t", 64, "CPU-sized: widths 64/128/192, depths 6/2/1")
