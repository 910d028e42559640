"""Pieces shared by the model families: the backbone contract, conditioning embeddings."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class DiffusionBackbone(nn.Module):
    """Contract every model in the zoo fulfils.

    ``forward(x, t, y)`` maps a noisy latent ``x`` (B, C, H, W), integer timesteps ``t`` (B,)
    and class labels ``y`` (B,) to ``(B, 2*C, H, W)``: the noise prediction in the first C
    channels and the learned-variance interpolation value in the last C (as DiT).
    Labels equal to ``num_classes`` mean "no class" (the classifier-free null token); the
    caller decides when to drop labels, so that every model sees the same drops.

    ``forward_stages`` returns the predictions of every resolution stage, finest first; the
    first entry is what ``forward`` returns. ``stage_loss_weights`` (finest first) says how the
    training loss weights them; a single entry means only the final output is trained.
    """

    stage_loss_weights: tuple[float, ...] = (1.0,)

    def __init__(self, in_channels: int, input_size: int, num_classes: int,
                 class_dropout_prob: float):
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels ({in_channels}) and num_classes ({num_classes}) "
                             "must be positive")
        if not 0.0 <= class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {class_dropout_prob}")
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels
        self.input_size = input_size
        self.num_classes = num_classes
        self.class_dropout_prob = class_dropout_prob
        self.activation_checkpointing = False
        self._checkpoint_fn: Callable | None = None

    def set_activation_checkpointing(self, enabled: bool = True,
                                     checkpoint_fn: Callable | None = None) -> None:
        """Recompute each block's activations in the backward pass instead of storing them.

        ``checkpoint_fn(block, *args)`` defaults to ``torch.utils.checkpoint`` (non-reentrant);
        a training engine may pass its own (DeepSpeed's, for example).
        """
        self.activation_checkpointing = enabled
        self._checkpoint_fn = checkpoint_fn

    def run_block(self, block: nn.Module, *args):
        if self.activation_checkpointing and torch.is_grad_enabled():
            if self._checkpoint_fn is not None:
                return self._checkpoint_fn(block, *args)
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward_stages(self, x: torch.Tensor, t: torch.Tensor,
                       y: torch.Tensor) -> list[torch.Tensor]:
        return [self(x, t, y)]

    def check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{type(self).__name__} was built for inputs of shape "
                             f"(B, {expected[0]}, {expected[1]}, {expected[2]}), "
                             f"got {tuple(x.shape)}")


def require_divisible(model_name: str, input_size: int, divisor: int, why: str) -> None:
    if input_size < divisor or input_size % divisor:
        raise ValueError(f"{model_name}: input_size {input_size} does not fit this model: it "
                         f"must be a positive multiple of {divisor} ({why})")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [cos, sin] order as DiT."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepEmbedder(nn.Module):
    """Sinusoidal frequencies followed by a two-layer MLP (DiT's design)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        frequencies = timestep_embedding(t, self.frequency_size)
        return self.mlp(frequencies.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class table with one extra row (index ``num_classes``) for the null class when
    label dropout is used."""

    def __init__(self, num_classes: int, hidden_size: int, class_dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        rows = num_classes + (1 if class_dropout_prob > 0 else 0)
        self.embedding_table = nn.Embedding(rows, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


def drop_labels(y: torch.Tensor, num_classes: int, prob: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by the null class with probability ``prob``.

    Done outside the model, from a caller-owned generator, so that every model in a
    comparison sees the same dropped labels at the same step.
    """
    if prob <= 0:
        return y
    drop = torch.rand(y.shape, generator=generator, device="cpu") < prob
    return torch.where(drop.to(y.device), torch.full_like(y, num_classes), y)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation; ``x`` is (B, ..., C) channels-last, shift/scale are (B, C)."""
    view = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    return x * (1 + scale.view(view)) + shift.view(view)


def init_normal_(module: nn.Module, std: float) -> None:
    """Weights ~ N(0, std), biases zero, for every Linear and Conv2d inside ``module``."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(layer.weight, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def zero_(modules: Sequence[nn.Module]) -> None:
    for module in modules:
        for parameter in module.parameters():
            nn.init.zeros_(parameter)


class AttentionCore(nn.Module):
    """Multi-head softmax(q k^T / sqrt(d)) v on packed projections (B, N, 3C) -> (B, N, C).

    A parameter-free module of its own so that static analysis can tell attention's
    multiply-adds from everything else's, whatever kernel runs it."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        batch, tokens, packed = qkv.shape
        dim = packed // 3
        q, k, v = qkv.view(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(
            2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(batch, tokens, dim)
