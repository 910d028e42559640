"""DICE: an attention-free cascade of ConvNeXt stages (DESIGN.md section 2).

Three stages run at 1x, 1/2x and 1/4x of the latent's resolution, lowest first. Each stage
predicts noise (plus learned-variance channels) at its resolution; the next finer stage sees
the noisy latent with that prediction, upsampled and gated by the conditioning, taken out.

The functions marked ``@replaceable`` are the model as written; ``kernels/`` holds
their faster equivalents and the rule for when each is taken (``DICE_KERNELS=0``: none is).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import replaceable
from .layers import (
    DiffusionBackbone,
    LabelEmbedder,
    TimestepEmbedder,
    init_normal_,
    modulate,
    require_divisible,
    zero_,
)
from .registry import register_preset


@replaceable
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


@replaceable
def depthwise(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return conv(x)


@replaceable
def two_hands(x: torch.Tensor, left: nn.Conv2d, right: nn.Conv2d,
              lam: torch.Tensor | float) -> torch.Tensor:
    """Two depthwise 7x7 convolutions of one input, merged by signal extraction."""
    return signal_extraction(depthwise(x, left), depthwise(x, right), lam)


@replaceable
def modulated_mlp(mlp: nn.Sequential, x: torch.Tensor, shift: torch.Tensor,
                  scale: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``gate * mlp(modulate(x, shift, scale))`` for channels-last ``x`` (B, H, W, C):
    adaLN-Zero conditioning, as in DiT."""
    return gate[:, None, None, :] * mlp(modulate(x, shift, scale))


class DiceBlock(nn.Module):
    """ConvNeXt block with adaLN-Zero conditioning and the paper's two depthwise 7x7 'hands'
    (section 3.2). ``hands=1`` keeps the left one alone, without signal extraction: a plain
    ConvNeXt block, the ablation of the hands."""

    def __init__(self, channels: int, cond_size: int, mlp_ratio: float = 2.0, hands: int = 2):
        super().__init__()
        if hands not in (1, 2):
            raise ValueError(f"a DICE block has 1 or 2 hands, got {hands}")
        self.hands = hands
        self.dwconv_left = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        if hands == 2:
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
        if self.hands == 2:
            s = two_hands(x, self.dwconv_left, self.dwconv_right, self.lam)
        else:
            s = depthwise(x, self.dwconv_left)
        h = modulated_mlp(self.mlp, self.norm(s.permute(0, 2, 3, 1)), shift, scale, gate)
        return x + h.permute(0, 3, 1, 2)


class DiceStage(nn.Module):
    """1x1 stem from the latent to the stage width, DICE blocks, and a prediction head
    (``head=False``: none, for a stage whose features, not prediction, feed the next)."""

    def __init__(self, in_channels: int, width: int, depth: int, cond_size: int,
                 mlp_ratio: float, hands: int, head: bool = True):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 1)
        self.blocks = nn.ModuleList(DiceBlock(width, cond_size, mlp_ratio, hands)
                                    for _ in range(depth))
        if head:
            self.head_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
            self.head = nn.Linear(width, 2 * in_channels)


class DICE(DiffusionBackbone):
    """Stages are listed finest first (stage 1 at full resolution); the cascade runs coarsest
    first. ``cond_size`` is the conditioning width D; stage k has width ``width_multipliers[k]
    * D``.

    ``cascade="denoising"`` is the paper's (section 3.1): each coarser stage predicts noise,
    which is upsampled, gated and taken out of the next finer stage's latent.
    ``cascade="residual"`` is the usual cascade the paper argues against, as an ablation: each
    finer stage adds the coarser stage's last features, upsampled and projected by a
    zero-initialised 1x1 convolution, to its stem output; only the finest stage predicts.
    ``hands`` is 2 (the paper's) or 1 (the ablation; see ``DiceBlock``)."""

    def __init__(self, in_channels: int = 4, input_size: int = 32, num_classes: int = 1000,
                 class_dropout_prob: float = 0.1, cond_size: int = 1152,
                 width_multipliers: Sequence[int] = (1, 2, 3), depths: Sequence[int] = (6, 2, 1),
                 mlp_ratio: float = 2.0, stage_loss_weights: Sequence[float] = (1.0,),
                 init_std: float = 0.02, hands: int = 2, cascade: str = "denoising"):
        super().__init__(in_channels, input_size, num_classes, class_dropout_prob)
        self.num_stages = len(depths)
        self.cascade = cascade
        check_stages(input_size, width_multipliers, depths, stage_loss_weights, cascade)
        self.stage_loss_weights = tuple(stage_loss_weights)
        self.t_embedder = TimestepEmbedder(cond_size)
        self.y_embedder = LabelEmbedder(num_classes, cond_size, class_dropout_prob)
        widths = [m * cond_size for m in width_multipliers]
        self.stages = nn.ModuleList(
            DiceStage(in_channels, width, depth, cond_size, mlp_ratio, hands,
                      head=cascade == "denoising" or k == 0)
            for k, (width, depth) in enumerate(zip(widths, depths)))
        if cascade == "denoising":
            # g_k(c): per-channel gate on the coarser stage's upsampled noise prediction, one
            # for every stage that has a coarser stage below it. It starts at g = 1, not 0:
            # with both the heads and the gates at zero, the coarser head's gradient (through
            # g) and the gate's gradient (through the coarser prediction) would both stay zero.
            self.cascade_gates = nn.ModuleList(
                nn.Sequential(nn.SiLU(), nn.Linear(cond_size, in_channels))
                for _ in range(self.num_stages - 1))
        else:
            self.cascade_projections = nn.ModuleList(
                nn.Conv2d(widths[k + 1], widths[k], 1) for k in range(self.num_stages - 1))
        self.initialize_weights(init_std)

    def initialize_weights(self, std: float) -> None:
        init_normal_(self, std)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=std)
        zero_([block.adaLN_modulation for stage in self.stages for block in stage.blocks])
        zero_([stage.head for stage in self.stages if hasattr(stage, "head")])
        if self.cascade == "denoising":
            for gate in self.cascade_gates:
                nn.init.zeros_(gate[1].weight)
                nn.init.ones_(gate[1].bias)
        else:
            zero_(list(self.cascade_projections))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x, t, y)[0]

    def forward_stages(self, x: torch.Tensor, t: torch.Tensor,
                       y: torch.Tensor) -> list[torch.Tensor]:
        """Predictions of every stage that predicts, finest first (the first is the model's
        output)."""
        self.check_input(x)
        c = self.t_embedder(t) + self.y_embedder(y)
        if self.cascade == "denoising":
            return self._denoising_cascade(x, c)
        return self._residual_cascade(x, c)

    def _denoising_cascade(self, x: torch.Tensor, c: torch.Tensor) -> list[torch.Tensor]:
        predictions: list[torch.Tensor] = []
        for k in reversed(range(self.num_stages)):
            x_k = F.avg_pool2d(x, 2 ** k) if k else x
            if predictions:
                coarser_eps = predictions[-1][:, :self.in_channels]
                gate = self.cascade_gates[k](c)[:, :, None, None]
                x_k = x_k - gate * F.interpolate(coarser_eps, scale_factor=2, mode="nearest")
            stage = self.stages[k]
            predictions.append(self._predict(stage, self._features(stage, x_k, c)))
        return predictions[::-1]

    def _residual_cascade(self, x: torch.Tensor, c: torch.Tensor) -> list[torch.Tensor]:
        features = None
        for k in reversed(range(self.num_stages)):
            x_k = F.avg_pool2d(x, 2 ** k) if k else x
            lateral = None
            if features is not None:
                upsampled = F.interpolate(features, scale_factor=2, mode="nearest")
                lateral = self.cascade_projections[k](upsampled)
            features = self._features(self.stages[k], x_k, c, lateral)
        return [self._predict(self.stages[0], features)]

    def _features(self, stage: DiceStage, x: torch.Tensor, c: torch.Tensor,
                  lateral: torch.Tensor | None = None) -> torch.Tensor:
        h = stage.stem(x) if lateral is None else stage.stem(x) + lateral
        # channels-last, so that the permutes to (B, H, W, C) around LayerNorm and the MLP
        # are views, not copies
        h = h.contiguous(memory_format=torch.channels_last)
        for block in stage.blocks:
            h = self.run_block(block, h, c)
        return h

    @staticmethod
    def _predict(stage: DiceStage, h: torch.Tensor) -> torch.Tensor:
        return stage.head(stage.head_norm(h.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


def check_stages(input_size: int, width_multipliers: Sequence[int], depths: Sequence[int],
                 stage_loss_weights: Sequence[float], cascade: str) -> None:
    stages = len(depths)
    if len(width_multipliers) != stages:
        raise ValueError(f"DICE needs one width multiplier per stage: got "
                         f"{len(width_multipliers)} multipliers and {stages} depths")
    require_divisible("DICE", input_size, 2 ** (stages - 1),
                      f"{stages} stages halve the resolution {stages - 1} times")
    if cascade not in ("denoising", "residual"):
        raise ValueError(f"cascade is 'denoising' or 'residual', got {cascade!r}")
    predicting = stages if cascade == "denoising" else 1
    if not 1 <= len(stage_loss_weights) <= predicting:
        raise ValueError(f"stage_loss_weights needs 1 to {predicting} entries with the "
                         f"{cascade} cascade, got {len(stage_loss_weights)}")


def _register(name: str, cond_size: int, note: str, **extra) -> None:
    register_preset(name, "dice", DICE, note=note, cond_size=cond_size, **extra)


_register("dice-xl", 1152, "the paper's model: widths 1152/2304/3456, depths 6/2/1")
_register("dice-l", 768, "widths 768/1536/2304, depths 6/2/1")
_register("dice-b", 512, "widths 512/1024/1536, depths 6/2/1")
_register("dice-s", 256, "widths 256/512/768, depths 6/2/1")
_register("dice-t", 64, "CPU-sized: widths 64/128/192, depths 6/2/1")
_register("dice-t-onehand", 64, "ablation of the hands: dice-t with one depthwise 7x7 and no "
          "signal extraction", hands=1)
_register("dice-t-residual", 64, "ablation of the denoising cascade: dice-t with the usual "
          "residual cascade of upsampled features", cascade="residual")
