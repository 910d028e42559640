"""One optimiser step: its micro-batches, their seeded diffusion inputs, and the record of them.

Everything random is drawn from generators seeded by (seed, batch index, rank), so every model
sees the same latents, labels, timesteps and noise at the same step and a resumed run continues
exactly where it stopped.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.distributed as dist

from dice_core.durable import append_whole, reporting_full_disk, write_text_atomic
from dice_core.models import drop_labels
from dice_core.seeding import DIFFUSION_INPUTS, seeded_generator


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


def mean_over_ranks(value: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world_size
    return value


def optimiser_step(session, step: int) -> float | None:
    """Step ``step`` over its micro-batches; its loss (the mean over ranks), or None when the
    optimiser skipped it for a non-finite loss or gradient."""
    s = session
    step_loss = torch.zeros((), device=s.device)
    for micro in range(s.layout.accumulation):
        index = step * s.layout.accumulation + micro
        batch = next(s.loader)
        t, noise, labels = diffusion_inputs(s.seed, index, s.placement.rank, batch.latents,
                                            batch.labels, s.diffusion.num_timesteps,
                                            s.num_classes, s.model.class_dropout_prob)
        s.hashes.write(step, index, inputs_digest(batch.latents, labels, t, noise))
        losses = s.diffusion.training_losses(s.adapter, batch.latents.to(s.device),
                                             t.to(s.device), {"y": labels.to(s.device)},
                                             noise.to(s.device))
        loss = losses["loss"].mean()
        s.engine.backward(loss)
        s.engine.step()
        step_loss += loss.detach() / s.layout.accumulation
    skipped = s.optimizer.last_step_skipped or not s.engine.was_step_applied()
    step_loss = mean_over_ranks(step_loss, s.placement.world_size)
    return None if skipped else float(step_loss)


class InputHashLog:
    """One line per micro-batch, 'step index sha256(latents, labels, t, noise)': the record
    that every model saw the same inputs. Lines past the resumed step are dropped first."""

    def __init__(self, path: Path, start_step: int):
        kept = []
        if path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line and int(line.split()[0]) < start_step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))
        self.path = path
        # unbuffered: a line that finds no room is taken back at once, nothing fails at close
        self.handle = open(path, "ab", buffering=0)

    def write(self, step: int, index: int, digest: str) -> None:
        append_whole(self.handle, f"{step} {index} {digest}\n".encode(), self.path)

    def flush(self) -> None:
        with reporting_full_disk(self.path):
            os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()
