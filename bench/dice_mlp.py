"""DICE's modulated MLP, forward+backward, computed both ways: the adaLN modulation and gate
broadcast over the activations, and folded into per-sample weights (batched matmuls), at the
shapes of dice-t's stages (widths 64/128/192, MLP ratio 2). The folded kernel
(dice_core/models/kernels/folded_mlp.py) is taken where its rule holds; the ``rule`` column says
which it picks.
Interleaved rounds, median per variant; results go to bench/results/dice-mlp-*.{json,md}.

    python bench/dice_mlp.py [--rounds 9]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from dice_core.benchmarking import device_name, time_side_by_side, write_record
from dice_core.devices import reuse_freed_cpu_memory
from dice_core.models.dice import modulated_mlp
from dice_core.text_table import format_table

RESULTS = Path(__file__).resolve().parent / "results"
# (batch, channels, map size): dice-t's stages on 32x32x1 and on the embedded 8x8x4 latents
SHAPES = [(batch, channels, size) for batch in (16, 128)
          for channels, size in ((64, 32), (128, 16), (192, 8), (64, 8), (128, 4), (192, 2))]


def mlp_steps(batch: int, channels: int, size: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(),
                        nn.Linear(2 * channels, channels)).to(device)
    x = torch.randn(batch, size, size, channels, device=device, requires_grad=True)
    shift, scale, gate = (torch.randn(batch, channels, device=device, requires_grad=True)
                          for _ in range(3))

    def step(path):
        return lambda: path(mlp, x, shift, scale, gate).square().sum().backward()
    return {"broadcast": step(modulated_mlp.reference), "folded": step(modulated_mlp.kernel.run)}


def rule_folds(batch: int, channels: int, size: int) -> bool:
    mlp = nn.Sequential(nn.Linear(channels, 2 * channels))
    return modulated_mlp.kernel.rule(mlp, torch.empty(batch, size, size, channels, device="meta"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reuse_freed_cpu_memory()
    rows = []
    for batch, channels, size in SHAPES:
        medians = time_side_by_side(mlp_steps(batch, channels, size, device), device,
                                    args.rounds)
        rows.append({"batch": batch, "channels": channels, "size": size,
                     "broadcast_ms": 1000 * medians["broadcast"],
                     "folded_ms": 1000 * medians["folded"],
                     "folded_to_broadcast": medians["folded"] / medians["broadcast"],
                     "rule_folds": rule_folds(batch, channels, size)})
    table = format_table(
        ["batch", "channels", "map", "broadcast ms", "folded ms", "x broadcast", "rule"],
        [[r["batch"], r["channels"], f"{r['size']}x{r['size']}", f"{r['broadcast_ms']:.2f}",
          f"{r['folded_ms']:.2f}", f"{r['folded_to_broadcast']:.2f}",
          "folded" if r["rule_folds"] else "broadcast"] for r in rows])
    print(f"{device_name(device)}: DICE's modulated MLP, forward+backward")
    print(table)
    path = write_record(RESULTS, "dice-mlp", "DICE's modulated MLP: forward+backward", device,
                        rows, table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
