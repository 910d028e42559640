"""DeepSpeed: its config generated from params.yaml, and the engine started without a launcher."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch

from dice_core.errors import InputError

from .build_lock import clear_stale_build_locks
from .layout import BatchLayout


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is the paper's fp16 on a GPU and fp32 on a CPU, where DeepSpeed refuses fp16."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise InputError("train.precision = fp16 needs a GPU (DeepSpeed refuses fp16 on a "
                         "CPU); use bf16 or fp32 here")
    return precision


def deepspeed_config(layout: BatchLayout, precision: str, zero_stage: int,
                     initial_loss_scale_power: int) -> dict:
    return {
        "train_batch_size": layout.global_batch,
        "train_micro_batch_size_per_gpu": layout.micro_batch,
        "gradient_accumulation_steps": layout.accumulation,
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0,
                 "initial_scale_power": initial_loss_scale_power, "loss_scale_window": 1000,
                 "hysteresis": 2, "min_loss_scale": 1},
        "bf16": {"enabled": precision == "bf16"},
        "zero_optimization": {"stage": zero_stage},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


PROCESS_GROUP_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def child_process_env() -> dict[str, str]:
    """This environment minus this process's rank and rendezvous port, for starting another
    single-process run (which would otherwise try to bind the same port)."""
    return {key: value for key, value in os.environ.items()
            if key not in PROCESS_GROUP_VARIABLES}


def ensure_single_process_env() -> None:
    """Without a launcher DeepSpeed needs these five, or it falls back to MPI and fails."""
    if "RANK" in os.environ:
        return
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")


def environment_ninja_first() -> None:
    """DeepSpeed builds its CPU op with whichever ``ninja`` PATH finds first. Two ninja versions
    hash the build commands in their logs differently, so a process that finds the system's
    and one that finds this environment's rebuild the op for each other (about 50 s on 2
    cores each time): let this environment's always win."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if (Path(bin_dir) / "ninja").is_file() and not path.startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{path}"


def initialize_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict):
    import deepspeed

    ensure_single_process_env()
    environment_ninja_first()
    clear_stale_build_locks()       # DeepSpeed builds its CPU op here the first time
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def model_dtype(precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
