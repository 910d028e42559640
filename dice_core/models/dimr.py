"""DiMR (Liu et al., 2024): a multi-resolution network with time-dependent norms
(DESIGN.md section 3).

Two branches both read the noisy latent. The low-resolution branch is a Transformer over
patches, with an in-context class token and U-ViT long skips; the full-resolution branch is
a stack of ConvNeXt blocks with the same skips. Every state of the low-resolution branch is
concatenated, projected and pixel-shuffled up, and added to the full-resolution branch's
input. Each branch predicts noise at its own resolution (the multi-scale loss trains both).
Time enters only through the time-dependent norms (TD-LN): no adaLN, no timestep MLP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AttentionCore, DiffusionBackbone, LabelEmbedder, require_divisible
from .registry import register_preset

DIFFUSION_STEPS = 1000


def time_condition(t: torch.Tensor) -> torch.Tensor:
    """tau = log_snr / 4, with DiMR's linear time proxy log_snr = 8 n / N - 4 for n = t + 1.

    Not the schedule's true log-SNR: the official training script feeds this proxy, so tau
    runs from just above -1 (least noise) to 1 (pure noise).
    """
    log_snr = 8 * (t.float() + 1) / DIFFUSION_STEPS - 4
    return log_snr / 4


def per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, C) -> a view that broadcasts over channels-last ``x`` of shape (B, ..., C)."""
    return values.view(values.shape[0], *([1] * (x.ndim - 2)), values.shape[1])


class TimeDependentParameter(nn.Module):
    """A vector that slides between two learned values as the noise level changes:
    p(tau) = p1 + sigmoid((1 + slope) * tau + offset) * (p0 - p1).

    p0 and p1 start equal (so the untrained model ignores time) and slope, offset at zero.
    The official code keeps slope and offset out of weight decay.
    """

    def __init__(self, size: int, init_value: float):
        super().__init__()
        self.p0 = nn.Parameter(torch.full((size,), init_value))
        self.p1 = nn.Parameter(torch.full((size,), init_value))
        self.slope = nn.Parameter(torch.zeros(size))
        self.offset = nn.Parameter(torch.zeros(size))

    def forward(self, tau: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, size)."""
        mix = torch.sigmoid((1 + self.slope) * tau[:, None] + self.offset)
        return self.p1 + mix * (self.p0 - self.p1)


class TDLayerNorm(nn.Module):
    """LayerNorm over the last axis whose weight and bias depend on time."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = TimeDependentParameter(dim, 1.0)
        self.bias = TimeDependentParameter(dim, 0.0)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        weight, bias = self.weight(tau).to(x.dtype), self.bias(tau).to(x.dtype)
        return normed * per_sample(weight, x) + per_sample(bias, x)


class TDRMSNorm(nn.Module):
    """RMSNorm over the last axis whose scale depends on time (no bias)."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.scale = TimeDependentParameter(dim, 1.0)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        # The mean square is taken in float32: in fp16 it overflows for activations above ~256.
        normed = F.rms_norm(x.float(), x.shape[-1:], eps=self.eps)
        return (normed * per_sample(self.scale(tau).float(), x)).to(x.dtype)


class GatedMLP(nn.Module):
    """Pre-norm gated-GELU MLP: w2(GELU(w0 h) * w1 h), h = TD-RMSNorm(x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = TDRMSNorm(dim)
        self.w0 = nn.Linear(dim, hidden)
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        h = self.norm(x, tau)
        return self.w2(F.gelu(self.w0(h)) * self.w1(h))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm = TDRMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.core = AttentionCore(dim, num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        out = self.core(self.qkv(self.norm(x, tau)))
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Tokens (B, N, C): pre-norm attention and gated MLP, plain residuals, no gates."""

    def __init__(self, dim: int, hidden: int, num_heads: int):
        super().__init__()
        self.attn = SelfAttention(dim, num_heads)
        self.mlp = GatedMLP(dim, hidden)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, tau)
        return x + self.mlp(x, tau)


class ConvNeXtBlock(nn.Module):
    """Channels-last maps (B, H, W, C): a depthwise conv (no norm before it, as the official
    code), then the gated MLP, each with a residual."""

    def __init__(self, dim: int, hidden: int, kernel_size: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.mlp = GatedMLP(dim, hidden)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        x = x + self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x, tau)


class Head(nn.Module):
    """TD-LN, then a k x k conv to the noise prediction and learned-variance channels."""

    def __init__(self, dim: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.norm = TDLayerNorm(dim)
        self.conv = nn.Conv2d(dim, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x, tau).permute(0, 3, 1, 2))


class FeatureUpsample(nn.Module):
    """The cascade between branches: every low-resolution state, concatenated along channels,
    goes through TD-LN, one Linear to ratio^2 * out_dim channels, a pixel shuffle by
    ``ratio``, and a TD-LN at the output width."""

    def __init__(self, in_dim: int, out_dim: int, ratio: int):
        super().__init__()
        self.ratio = ratio
        self.norm_in = TDLayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, ratio * ratio * out_dim)
        self.norm_out = TDLayerNorm(out_dim)

    def forward(self, tau: torch.Tensor, *states: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.norm_in(torch.cat(states, dim=-1), tau))
        batch, height, width, channels = h.shape
        r = self.ratio
        # Channels are laid out as (row offset, column offset, feature), as the official code.
        h = h.view(batch, height, width, r, r, channels // (r * r)).transpose(2, 3)
        h = h.reshape(batch, height * r, width * r, channels // (r * r))
        return self.norm_out(h, tau)


class Branch(nn.Module):
    """One resolution: a stride-``stride`` conv embedding with learned absolute positions, an
    odd number of blocks joined U-ViT style (block i's output feeds, through a Linear over the
    concatenation, the input of block depth-1-i), and a prediction head."""

    def __init__(self, in_channels: int, out_channels: int, width: int, grid_size: int,
                 stride: int, blocks: list[nn.Module], head_kernel_size: int):
        super().__init__()
        if len(blocks) % 2 == 0:
            raise ValueError(f"DiMR branches need an odd depth (a middle block between the "
                             f"long skips), got {len(blocks)}")
        self.embed = nn.Conv2d(in_channels, width, stride, stride=stride)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid_size, grid_size, width))
        self.blocks = nn.ModuleList(blocks)
        self.skip_projections = nn.ModuleList(nn.Linear(2 * width, width)
                                              for _ in range(len(blocks) // 2))
        self.head = Head(width, out_channels, head_kernel_size)

    def embed_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) latent -> (B, H/stride, W/stride, width) channels-last features."""
        return self.embed(x).permute(0, 2, 3, 1) + self.pos_embed


class DiMR(DiffusionBackbone):
    """DiMR-style two-branch model ("/2R"). Depths count blocks and must be odd."""

    stage_loss_weights = (1.0, 0.25)

    def __init__(self, in_channels: int = 4, input_size: int = 32, num_classes: int = 1000,
                 class_dropout_prob: float = 0.1, patch_size: int = 2,
                 transformer_width: int = 960, transformer_depth: int = 39, num_heads: int = 16,
                 convnext_width: int = 480, convnext_depth: int = 21, mlp_ratio: float = 2.0,
                 kernel_size: int = 7, head_kernel_size: int = 3):
        super().__init__(in_channels, input_size, num_classes, class_dropout_prob)
        require_divisible("DiMR", input_size, patch_size,
                          f"the Transformer branch works on {patch_size}x{patch_size} patches")
        self.grid_size = input_size // patch_size
        self.class_embedder = LabelEmbedder(num_classes, transformer_width, class_dropout_prob)
        transformer_hidden = int(transformer_width * mlp_ratio)
        self.lowres = Branch(
            in_channels, self.out_channels, transformer_width, self.grid_size, patch_size,
            [TransformerBlock(transformer_width, transformer_hidden, num_heads)
             for _ in range(transformer_depth)], head_kernel_size)
        # Every Transformer state feeds the cascade: the input embedding and each block output.
        self.upsample = FeatureUpsample(transformer_width * (transformer_depth + 1),
                                        convnext_width, patch_size)
        convnext_hidden = int(convnext_width * mlp_ratio)
        self.highres = Branch(
            in_channels, self.out_channels, convnext_width, input_size, 1,
            [ConvNeXtBlock(convnext_width, convnext_hidden, kernel_size)
             for _ in range(convnext_depth)], head_kernel_size)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # Truncated N(0, 0.02) for Linears, embeddings and positions as the official code;
        # the convolutions other than the heads keep PyTorch's default init, as there.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.class_embedder.embedding_table.weight, std=0.02)
        for branch in (self.lowres, self.highres):
            nn.init.trunc_normal_(branch.pos_embed, std=0.02)
            # Zero heads make the untrained model the "predict zero" function, the same start
            # as adaLN-Zero in DiT and DICE (the official DiMR heads are not zeroed).
            nn.init.zeros_(branch.head.conv.weight)
            nn.init.zeros_(branch.head.conv.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x, t, y)[0]

    def forward_stages(self, x: torch.Tensor, t: torch.Tensor,
                       y: torch.Tensor) -> list[torch.Tensor]:
        """[full-resolution prediction, low-resolution (input_size / patch_size) prediction]."""
        self.check_input(x)
        tau = time_condition(t)
        batch, g = x.shape[0], self.grid_size

        patches = self.lowres.embed_input(x).flatten(1, 2)
        tokens = torch.cat([self.class_embedder(y)[:, None], patches], dim=1)
        tokens, states = self._run_branch(self.lowres, tokens, tau)
        # Drop the class token and restore the patch grid.
        tokens, *states = (s[:, 1:].reshape(batch, g, g, -1) for s in [tokens, *states])
        lowres_prediction = self.lowres.head(tokens, tau)

        # Checkpointed too: its concatenated input is the widest activation of the model.
        h = self.highres.embed_input(x) + self.run_block(self.upsample, tau, *states)
        h, _ = self._run_branch(self.highres, h, tau)
        return [self.highres.head(h, tau), lowres_prediction]

    def _run_branch(self, branch: Branch, h: torch.Tensor,
                    tau: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the U-shaped block stack; return the output and every state (the input and
        each block's output) for the cascade."""
        half = len(branch.blocks) // 2
        states, skips = [h], []
        for block in branch.blocks[:half]:
            h = self.run_block(block, h, tau)
            states.append(h)
            skips.append(h)
        h = self.run_block(branch.blocks[half], h, tau)
        states.append(h)
        for projection, block in zip(branch.skip_projections, branch.blocks[half + 1:]):
            h = self.run_block(block, projection(torch.cat([h, skips.pop()], dim=-1)), tau)
            states.append(h)
        return h, states


def _register(name: str, transformer: tuple[int, int], convnext: tuple[int, int], heads: int,
              note: str) -> None:
    """A DiMR preset of a (width, depth) Transformer and a (width, depth) ConvNeXt."""
    register_preset(name, "dimr", DiMR, note=note, num_heads=heads,
                    transformer_width=transformer[0], transformer_depth=transformer[1],
                    convnext_width=convnext[0], convnext_depth=convnext[1])


_register("dimr-xl-2r", (960, 39), (480, 21), 16,
          "official DiMR-XL/2R: Transformer 960 wide x 39 blocks on 2x2 patches, ConvNeXt 480 "
          "wide x 21 blocks at full resolution")
_register("dimr-dice-paper", (512, 29), (256, 15), 8,
          "the DICE paper's DiMR row: DiMR-XL/2R's design at widths 512/256 (from 960/480) and "
          "depths 29/15 (from 39/21), 8 heads of 64; with 2*C-channel heads this gives that "
          "row's 107,452,688 parameters exactly")
_register("dimr-t", (64, 9), (40, 5), 4,
          "CPU-sized: Transformer 64 wide x 9 blocks (4 heads), ConvNeXt 40 wide x 5 blocks; "
          "XL/2R's depth ratio, its ConvNeXt widened so that the tiny presets stay within 10% "
          "of each other in size on small latents too")
