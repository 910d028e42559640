"""What every script under bench/ shares: the device's name and the record it writes."""
from __future__ import annotations

import contextlib
import json
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from dice_core.durable import write_text_atomic
from dice_core.models import build_model, compile_model, get_preset, kernels


@dataclass(frozen=True)
class Variant:
    """A preset as a benchmark runs it: torch.compile'd or eager, and for DICE with its
    kernels (dice_core/models/kernels, the default) or as the plain reference model."""
    preset: str
    compiled: bool = False
    kernels: bool = True

    @property
    def family(self) -> str:
        return get_preset(self.preset).family

    @property
    def kernels_label(self) -> str:
        """Only DICE has kernels."""
        if self.family != "dice":
            return "-"
        return "on" if self.kernels else "off"

    def build(self, **overrides) -> torch.nn.Module:
        model = build_model(self.preset, **overrides)
        return compile_model(model) if self.compiled else model

    def scoped(self, call):
        """``call`` (a step: forward and backward, or a whole sampling) with this variant's
        kernels."""
        def run(*args, **kwargs):
            with contextlib.nullcontext() if self.kernels else kernels.disabled():
                return call(*args, **kwargs)
        return run


def variants(presets: list[str], compiled: bool) -> list[Variant]:
    """Each preset eager, DICE also without kernels, and with ``compiled`` each preset
    compiled too (with kernels only: a compile costs minutes on a small CPU)."""
    eager = [Variant(p) for p in presets]
    eager += [Variant(p, kernels=False) for p in presets if Variant(p).family == "dice"]
    return eager + ([Variant(p, compiled=True) for p in presets] if compiled else [])


def ratios_to_dit(seconds: dict[Variant, float],
                  macs: dict[str, int]) -> dict[Variant, tuple[float, float]]:
    """(time, time per multiply-add) of each variant as ratios to the DiT variant timed in
    the same compile mode."""
    dit = {v.compiled: v for v in seconds if v.family == "dit"}
    ratios = {}
    for variant, time_s in seconds.items():
        base = dit[variant.compiled]
        ratio = time_s / seconds[base]
        ratios[variant] = (ratio, ratio * macs[base.preset] / macs[variant.preset])
    return ratios


def first_call_seconds(calls: dict, device: torch.device) -> dict:
    """Seconds of each call's first run: for a compiled model, mostly its compile."""
    seconds = {}
    for key, call in calls.items():
        start = time.perf_counter()
        call()
        synchronize(device)
        seconds[key] = time.perf_counter() - start
    return seconds


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def write_record(results_dir: Path, name: str, title: str, device: torch.device,
                 rows: list[dict], table: str, extras: dict | None = None,
                 stem: str | None = None) -> Path:
    """Writes ``<stem>.json`` (the rows, and ``extras``) and ``<stem>.md`` (the printed
    table); ``stem`` is ``<name>-{cpu,gpu}`` unless given."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{name}-{'gpu' if device.type == 'cuda' else 'cpu'}"
    record = {"benchmark": title, "device": device_name(device), "torch": torch.__version__,
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "rows": rows,
              **(extras or {})}
    json_path = results_dir / f"{stem}.json"
    write_text_atomic(json_path, json.dumps(record, indent=2) + "\n")
    write_text_atomic(results_dir / f"{stem}.md",
                      f"# {title}\n\nDevice: {record['device']}, torch {record['torch']}, "
                      f"{record['date']}\n\n```\n{table}\n```\n")
    return json_path


def make_train_step(model, batch_size: int, device: torch.device, dtype: torch.dtype | None):
    """One forward+backward of ``model`` on a fixed random batch (autocast to ``dtype``)."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, model.in_channels, model.input_size, model.input_size)
    x = torch.randn(shape, generator=generator).to(device)
    t = torch.randint(0, 1000, (batch_size,), generator=generator).to(device)
    y = torch.randint(0, model.num_classes, (batch_size,), generator=generator).to(device)
    target = torch.randn((batch_size, model.out_channels) + shape[2:], generator=generator)
    target = target.to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.mse_loss(model(x, t, y).float(), target)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(steps: dict, device: torch.device, rounds: int) -> dict[str, float]:
    """Median seconds per call of each step, timed in interleaved rounds (A B C A B C ...) so
    that a noisy, shared machine slows all of them alike."""
    for step in steps.values():  # warm-up: allocator, kernels, autotuning
        step()
    seconds = {family: [] for family in steps}
    for _ in range(rounds):
        for family, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            seconds[family].append(time.perf_counter() - start)
    return {family: statistics.median(values) for family, values in seconds.items()}


def engine_step(model, device: torch.device, global_batch: int, micro_batch: int,
                precision: str, checkpointing: bool):
    """(engine, step): one optimiser step of ``model`` through the real DeepSpeed engine (the
    hybrid loss, forward, backward, AdamW) on a fixed random batch, as training runs it."""
    from dice_core.diffusion import create_diffusion
    from dice_core.training.engine import deepspeed_config, initialize_engine, model_dtype
    from dice_core.training.layout import batch_layout
    from dice_core.training.optim import FiniteAdamW
    from dice_core.training.steps import PrecisionAdapter

    model = model.to(device)
    model.set_activation_checkpointing(checkpointing)
    layout = batch_layout(global_batch, micro_batch, 1)
    engine = initialize_engine(model, FiniteAdamW(model.parameters(), lr=1e-4),
                               deepspeed_config(layout, precision, 0, 16))
    adapter = PrecisionAdapter(engine, model_dtype(precision))
    diffusion = create_diffusion(timestep_respacing="")
    generator = torch.Generator().manual_seed(0)
    shape = (micro_batch, model.in_channels, model.input_size, model.input_size)
    x0 = torch.randn(shape, generator=generator).to(device)
    t = torch.randint(0, 1000, (micro_batch,), generator=generator).to(device)
    y = torch.randint(0, model.num_classes, (micro_batch,), generator=generator).to(device)

    def step() -> None:
        for _ in range(layout.accumulation):
            loss = diffusion.training_losses(adapter, x0, t, {"y": y})["loss"].mean()
            engine.backward(loss)
            engine.step()
    return engine, step
