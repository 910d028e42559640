"""What every script under bench/ shares: the device's name and the record it writes."""
from __future__ import annotations

import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from dice_core.durable import write_text_atomic


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
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows,
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
