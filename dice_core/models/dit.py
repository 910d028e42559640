"""DiT (Peebles & Xie): a Transformer over latent patches with adaLN-Zero (DESIGN.md section 3)."""
from __future__ import annotations

import torch
from torch import nn

from .layers import (
    AttentionCore,
    DiffusionBackbone,
    LabelEmbedder,
    TimestepEmbedder,
    modulate,
    require_divisible,
    zero_,
)
from .registry import register_preset


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(grid_size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D position embedding of a row-major token grid, (grid_size**2, dim): the first
    half of the channels encodes the column, the second half the row (the MAE layout DiT uses)."""
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    return torch.cat([sincos_1d(cols.flatten(), dim // 2),
                      sincos_1d(rows.flatten(), dim // 2)], dim=1).float()


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.core = AttentionCore(dim, num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.core(self.qkv(x))
        return self.proj(out)


class DiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(DiffusionBackbone):
    def __init__(self, in_channels: int = 4, input_size: int = 32, num_classes: int = 1000,
                 class_dropout_prob: float = 0.1, patch_size: int = 2, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0):
        super().__init__(in_channels, input_size, num_classes, class_dropout_prob)
        require_divisible("DiT", input_size, patch_size, f"patch size {patch_size}")
        self.patch_size = patch_size
        self.grid_size = input_size // patch_size
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.pos_embed = nn.Parameter(sincos_2d(self.grid_size, hidden_size)[None],
                                      requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio)
                                    for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        patch_weight = self.x_embedder.weight
        nn.init.xavier_uniform_(patch_weight.view(patch_weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zero_([block.adaLN_modulation for block in self.blocks])
        zero_([self.final_layer.adaLN_modulation, self.final_layer.linear])

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, tokens, p*p*C) -> (B, C, H, W)."""
        p, g, c = self.patch_size, self.grid_size, self.out_channels
        x = x.view(x.shape[0], g, g, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        tokens = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            tokens = self.run_block(block, tokens, c)
        return self.unpatchify(self.final_layer(tokens, c))


_SIZES = {  # depth, hidden size, heads (the DiT paper's Table 1)
    "s": (12, 384, 6),
    "b": (12, 768, 12),
    "l": (24, 1024, 16),
    "xl": (28, 1152, 16),
}
for _size, (_depth, _hidden, _heads) in _SIZES.items():
    for _patch in (2, 4, 8):
        register_preset(f"dit-{_size}-{_patch}", "dit", DiT,
                        note=f"DiT-{_size.upper()}/{_patch}: depth {_depth}, width {_hidden}",
                        depth=_depth, hidden_size=_hidden, num_heads=_heads, patch_size=_patch)
register_preset("dit-t", "dit", DiT, note="CPU-sized: depth 5, width 80, 4 heads, patch 2",
                depth=5, hidden_size=80, num_heads=4, patch_size=2)
