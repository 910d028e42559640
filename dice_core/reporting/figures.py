"""Figures 11 to 13 of the paper: FD and IS against training step, and throughput against FD
with the bubble's area the model's GFLOPs."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from dice_core.durable import replace_atomically  # noqa: E402

from .collect import ModelResults  # noqa: E402


def curve(results: list[ModelResults], key: str, label: str, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(6, 4))
    for r in results:
        points = [(step, metrics[key]) for step, metrics in r.history if key in metrics]
        if points:
            axes.plot(*zip(*points), marker="o", label=r.run)
    axes.set_xlabel("training step")
    axes.set_ylabel(label)
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend()
    else:
        axes.text(0.5, 0.5, f"no {label} logged yet", ha="center", va="center",
                  transform=axes.transAxes)
    figure.tight_layout()
    replace_atomically(path, lambda stream: figure.savefig(stream, format="png", dpi=120))
    plt.close(figure)
    return path


def bubbles(results: list[ModelResults], fd_key: str, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(6, 4))
    for r in results:
        throughput = (r.static.get("throughput") or {}).get("samples_per_s")
        if throughput is None or fd_key not in r.final:
            continue
        gflops = r.static["flops"] / 1e9
        axes.scatter(throughput, r.final[fd_key], s=max(gflops, 1e-3) * 2000 / max(
            x.static["flops"] / 1e9 for x in results), alpha=0.5)
        axes.annotate(f"{r.model}\n{gflops:.2f} GFLOPs", (throughput, r.final[fd_key]),
                      ha="center")
    axes.set_xlabel("samples/s")
    axes.set_ylabel(fd_key)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    replace_atomically(path, lambda stream: figure.savefig(stream, format="png", dpi=120))
    plt.close(figure)
    return path
