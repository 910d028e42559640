"""The training loop, the same for every model and for every backend.

Read top to bottom: set-up (data, model, EMA, DeepSpeed engine, resume), then one optimiser
step per iteration (micro-batches with gradient accumulation), logging, checkpoints and the
evaluation hook. Everything random is drawn from generators seeded by (seed, batch index,
rank), so every model sees the same latents, labels, timesteps and noise at the same step and
a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from dice_core.config import Params
from dice_core.data import check_lanes, make_loader, read_latent_manifest
from dice_core.data.encoders import decoder_for, pick_device
from dice_core.diffusion import create_diffusion
from dice_core.durable import write_json_atomic
from dice_core.ema import create_ema
from dice_core.evaluation.evaluate import Evaluator
from dice_core.evaluation.sampling import image_grid, sample_images
from dice_core.models import build_model, drop_labels, get_preset
from dice_core.seeding import DIFFUSION_INPUTS, seeded_generator
from dice_core.tracking import EmissionsMeter, RunTracker

from .checkpoint import CheckpointStore
from .engine import deepspeed_config, initialize_engine, model_dtype, resolve_precision
from .errors import NonFiniteLoss
from .layout import batch_layout
from .optim import FiniteAdamW
from .run_lock import RunFolderLock

GRID_SAMPLES = 16


@dataclass
class Worker:
    """Where this copy of the loop runs."""
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None
    parent_run_id: str | None = None
    on_checkpoint: Callable[[Path, dict], None] | None = None   # Ray reports through this


class PrecisionAdapter(torch.nn.Module):
    """Calls the engine in the model's dtype and hands float32 back to the diffusion loss."""

    def __init__(self, engine, dtype: torch.dtype):
        super().__init__()
        self.engine, self.dtype = engine, dtype
        self.stage_loss_weights = engine.module.stage_loss_weights

    def forward(self, x, t, y):
        return self.engine(x.to(self.dtype), t, y).float()

    def forward_stages(self, x, t, y):
        return [s.float() for s in self.engine.module.forward_stages(x.to(self.dtype), t, y)]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def mean_over_ranks(value: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world_size
    return value


def diffusion_inputs(seed: int, index: int, rank: int, latents: torch.Tensor,
                     labels: torch.Tensor, num_timesteps: int, num_classes: int,
                     class_dropout_prob: float):
    """Timesteps, noise and (partly dropped) labels of batch ``index``, from its own stream."""
    generator = seeded_generator(seed, DIFFUSION_INPUTS, index, rank)
    t = torch.randint(0, num_timesteps, (len(latents),), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    labels = drop_labels(labels, num_classes, class_dropout_prob, generator)
    return t, noise, labels


def inputs_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_model(params: Params, model_name: str, worker: Worker | None = None) -> dict:
    """Trains ``model_name`` to ``train.steps`` (resuming its run folder) and returns a summary.
    Refused at once when another process trains in the same run folder."""
    worker = worker or Worker()
    params = params.for_model(model_name)
    # before the engine and the MLflow run: too many loader lanes for the shards is refused now
    check_lanes(params.train.data, worker.world_size, params.train.loader_workers)
    with RunFolderLock(Path(params.train.output) / model_name, enabled=worker.rank == 0):
        return _train(params, model_name, worker)


def _train(params: Params, model_name: str, worker: Worker) -> dict:
    train, seed = params.train, params.seed
    rank, world_size = worker.rank, worker.world_size
    is_main = rank == 0

    # --- set-up ---------------------------------------------------------------------------
    manifest = read_latent_manifest(train.data)
    layout = batch_layout(train.global_batch, train.micro_batch, world_size)
    device = worker.device or pick_device(train.device)
    precision = resolve_precision(train.precision, device)
    run_dir = Path(train.output) / model_name
    run_dir.mkdir(parents=True, exist_ok=True)
    channels, size, _ = manifest["latent_shape"]
    num_classes = manifest["num_classes"]

    torch.manual_seed(seed)  # the same initial weights for a given model, in every run
    model = build_model(model_name, in_channels=channels, input_size=size,
                        num_classes=num_classes, **train.model_overrides)
    model.set_activation_checkpointing(train.activation_checkpointing)
    ema = create_ema(model, train.ema_decay, train.ema_warmup)
    optimizer = FiniteAdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    ds_config = deepspeed_config(layout, precision, train.zero_stage,
                                 train.initial_loss_scale_power)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    engine = initialize_engine(model.to(device), optimizer, ds_config)
    ema.to(device)
    adapter = PrecisionAdapter(engine, model_dtype(precision))
    diffusion = create_diffusion(timestep_respacing="")

    signature = {"model": model_name, "model_config": model.preset_config,
                 "precision": precision, "global_batch": layout.global_batch,
                 "micro_batch": layout.micro_batch, "world_size": world_size, "seed": seed,
                 "lr": train.lr, "weight_decay": train.weight_decay,
                 "ema_decay": train.ema_decay, "ema_warmup": train.ema_warmup,
                 "loader_workers": train.loader_workers,
                 "data": manifest["params_hash"]}
    store = CheckpointStore(run_dir, rank, train.keep_checkpoints)
    state = store.load(engine, ema, signature) or {}
    if is_main:     # only now: a refused resume leaves the run folder's record as it was
        write_json_atomic(run_dir / "deepspeed_config.json", ds_config)
    start_step = state.get("step", 0)
    window = state.get("window", {"loss_sum": 0.0, "count": 0, "skipped": 0})
    consecutive_skips = state.get("consecutive_skips", 0)

    tracker = RunTracker(params.tracking.uri, params.tracking.experiment, run_dir / "tracking",
                         run_name=model_name, parent_run_id=worker.parent_run_id,
                         tags={"model": model_name, "family": get_preset(model_name).family},
                         enabled=is_main, retry_seconds=params.tracking.retry_seconds,
                         once_per_step=True)
    if is_main and start_step == 0:
        tracker.log_params({"model": model_name, "model_config": model.preset_config,
                            "train": train.model_dump(), "seed": seed,
                            "precision": precision, "accumulation": layout.accumulation,
                            "world_size": world_size,
                            "parameters": sum(p.numel() for p in model.parameters()),
                            "data_params_hash": manifest["params_hash"],
                            "data_encoder": manifest["encoder"], "git_commit": git_commit()})
    emissions = EmissionsMeter(run_dir / "emissions", params.emissions.country_iso_code,
                               gpus=world_size if device.type == "cuda" else 0,
                               board_power_watts=params.emissions.board_power_watts,
                               grid_g_per_kwh=params.emissions.grid_g_per_kwh) \
        if is_main else None
    if emissions:
        emissions.start()

    loader = make_loader(train.data, batch_size=layout.micro_batch, seed=seed, rank=rank,
                         world_size=world_size, num_workers=train.loader_workers,
                         start_batch=start_step * layout.accumulation)
    hashes = InputHashLog(run_dir / f"input_hashes.rank{rank}.txt", start_step)

    eval_config = params.evaluate.for_training()
    evaluator = None   # built at the first evaluation, then reused
    grid_decoder = None
    warned_no_reference = False

    def evaluate(ema_model, step: int) -> None:
        """ADM's metrics at this step when there is a reference, else the sample grid alone."""
        nonlocal evaluator, grid_decoder, warned_no_reference
        if Path(params.evaluate.reference).is_file():
            evaluator = evaluator or Evaluator(manifest, eval_config, seed)
            folder = run_dir / "eval" / f"step-{step:07d}"
            metrics = evaluator(ema_model, folder)
            tracker.log_metrics({f"eval/{key}": value for key, value in metrics.items()
                                 if isinstance(value, (int, float))}, step=step)
            if params.tracking.log_images:
                tracker.log_artifact(folder / "grid.png", f"samples/step-{step:07d}")
            return
        if not warned_no_reference:
            warned_no_reference = True
            print(f"no reference statistics at {params.evaluate.reference}: evaluation logs "
                  "sample grids only; run `dvc repro reference` for the metrics")
        if params.tracking.log_images:
            grid_decoder = grid_decoder or decoder_for(manifest, str(device))
            grid = image_grid(sample_images(
                ema_model, grid_decoder, count=GRID_SAMPLES, num_classes=num_classes,
                seed=seed, latent_shape=tuple(manifest["latent_shape"]),
                sampler=eval_config.sampler, steps=eval_config.steps))
            tracker.log_image(grid, f"samples/step-{step:07d}.png")

    # --- the loop ---------------------------------------------------------------------------
    bar = tqdm(total=train.steps, initial=start_step, desc=model_name, unit="step",
               disable=not is_main)
    window_start = time.perf_counter()
    window_steps = 0
    status = "FAILED"
    completed = start_step
    try:
        for step in range(start_step, train.steps):
            step_loss = torch.zeros((), device=device)
            for micro in range(layout.accumulation):
                index = step * layout.accumulation + micro
                batch = next(loader)
                t, noise, labels = diffusion_inputs(seed, index, rank, batch.latents,
                                                    batch.labels, diffusion.num_timesteps,
                                                    num_classes, model.class_dropout_prob)
                hashes.write(step, index, inputs_digest(batch.latents, labels, t, noise))
                losses = diffusion.training_losses(adapter, batch.latents.to(device),
                                                   t.to(device), {"y": labels.to(device)},
                                                   noise.to(device))
                loss = losses["loss"].mean()
                engine.backward(loss)
                engine.step()
                step_loss += loss.detach() / layout.accumulation
            skipped = optimizer.last_step_skipped or not engine.was_step_applied()
            step_loss = mean_over_ranks(step_loss, world_size)
            if skipped:
                consecutive_skips += 1
                window["skipped"] += 1
                if consecutive_skips >= train.max_nonfinite_steps:
                    raise NonFiniteLoss(
                        f"{model_name}: {consecutive_skips} optimiser steps in a row had a "
                        f"non-finite loss or gradient (up to step {step + 1}); stopped. The "
                        f"last good checkpoint is kept in {store.folder}. Lower train.lr, "
                        "check the data, or use another precision.")
            else:
                consecutive_skips = 0
                ema.update_parameters(engine.module)
                window["loss_sum"] += float(step_loss)
                window["count"] += 1
            window_steps += 1
            done = completed = step + 1
            bar.update(1)

            if done % train.log_every == 0 or done == train.steps:
                seconds = time.perf_counter() - window_start
                metrics = {"train/steps_per_s": window_steps / seconds,
                           "train/images_per_s": window_steps * layout.global_batch / seconds,
                           "train/skipped_steps": window["skipped"]}
                if window["count"]:
                    metrics["train/loss"] = window["loss_sum"] / window["count"]
                if precision == "fp16":
                    metrics["train/loss_scale"] = float(engine.optimizer.cur_scale)
                if is_main:
                    tracker.log_metrics(metrics, step=done)
                    tracker.log_system_metrics(step=done)
                    bar.set_postfix(loss=f"{metrics.get('train/loss', float('nan')):.4f}",
                                    img_s=f"{metrics['train/images_per_s']:.1f}")
                window = {"loss_sum": 0.0, "count": 0, "skipped": 0}
                window_start, window_steps = time.perf_counter(), 0

            if (done % train.eval_every == 0 or done == train.steps) and is_main:
                evaluate(ema.module, done)

            if done % train.ckpt_every == 0 or done == train.steps:
                hashes.flush()
                path = store.save(engine, ema, {"step": done, "signature": signature,
                                                "window": window,
                                                "consecutive_skips": consecutive_skips})
                if emissions:
                    emissions.checkpoint()
                if worker.on_checkpoint:
                    worker.on_checkpoint(path, {"step": done, **({"loss": float(step_loss)}
                                                                if not skipped else {})})
        status = "FINISHED"
    finally:
        bar.close()
        hashes.close()
        summary = {"model": model_name, "steps": completed, "status": status,
                   "run_dir": str(run_dir), "run_id": tracker.run_id}
        if emissions:
            totals = emissions.stop()
            tracker.log_metrics(totals, step=completed)
            summary["emissions"] = totals
        if is_main and status == "FINISHED":
            final = store.latest_ema()
            tracker.log_artifact(final, "ema")
            summary["ema_weights"] = str(final)
        tracker.close(status=status)
        if is_main:
            write_json_atomic(run_dir / "summary.json", summary)
    return summary


class InputHashLog:
    """One line per micro-batch, 'step index sha256(latents, labels, t, noise)': the record
    that every model saw the same inputs. Lines past the resumed step are dropped first."""

    def __init__(self, path: Path, start_step: int):
        kept = []
        if path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line and int(line.split()[0]) < start_step]
        path.write_text("".join(line + "\n" for line in kept))
        self.handle = open(path, "a")

    def write(self, step: int, index: int, digest: str) -> None:
        self.handle.write(f"{step} {index} {digest}\n")

    def flush(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()
