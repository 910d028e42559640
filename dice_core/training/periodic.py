"""The loop's periodic jobs, one call each: log, evaluate, checkpoint; and how a run ends
(finished, failed, or stopped by a divergence)."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from dice_core.data.encoders import decoder_for
from dice_core.durable import write_json_atomic
from dice_core.evaluation.evaluate import Evaluator
from dice_core.evaluation.sampling import image_grid, sample_images

from .errors import NonFiniteLoss
from .health import LossWindow
from .session import Session

GRID_SAMPLES = 16


def due(done: int, every: int, steps: int) -> bool:
    """Whether a job that runs every ``every`` steps (and after the last) runs at ``done``."""
    return done % every == 0 or done == steps


def log_progress(s: Session, done: int, bar) -> None:
    """The window's loss and throughput (every rank resets its window; rank 0 logs)."""
    metrics = s.window.metrics(s.layout.global_batch)
    metrics["train/lr"] = s.optimizer.param_groups[0]["lr"]
    if s.precision == "fp16":
        metrics["train/loss_scale"] = float(s.engine.optimizer.cur_scale)
    if s.is_main:
        s.tracker.log_metrics(metrics, step=done)
        s.tracker.log_system_metrics(step=done)
        bar.set_postfix(loss=f"{metrics.get('train/loss', float('nan')):.4f}",
                        img_s=f"{metrics['train/images_per_s']:.1f}")
    s.window = LossWindow()


def timed(s: Session, metric: str, done: int, job: Callable, *args) -> None:
    """Runs ``job(*args)`` (an evaluation, a checkpoint) outside the throughput's window, and
    logs its wall time as ``metric``."""
    started = time.perf_counter()
    job(*args)
    s.tracker.log_metrics({metric: time.perf_counter() - started}, step=done)
    s.window.exclude(time.perf_counter() - started)


class Evaluation:
    """ADM's metrics of the EMA model when there is a reference, else the sample grid alone.
    The evaluator and the grid's decoder are built at the first call, then reused."""

    def __init__(self, s: Session):
        self.s = s
        self.config = s.job.evaluate.for_training()
        self.reference = Path(s.job.evaluate.reference)
        self.evaluator = None
        self.grid_decoder = None
        self.warned = False

    def __call__(self, step: int) -> None:
        if self.reference.is_file():
            self._metrics(step)
            return
        if not self.warned:
            self.warned = True
            print(f"no reference statistics at {self.reference}: evaluation logs sample grids "
                  "only; run `dvc repro reference` for the metrics")
        if self.s.job.tracking.log_images:
            self._grid(step)

    def _metrics(self, step: int) -> None:
        s = self.s
        self.evaluator = self.evaluator or Evaluator(s.manifest, self.config, s.sampling_seed)
        folder = s.run_dir / "eval" / f"step-{step:07d}"
        metrics = self.evaluator(s.ema.module, folder)
        s.tracker.log_metrics({f"eval/{key}": value for key, value in metrics.items()
                               if isinstance(value, (int, float))}, step=step)
        if s.job.tracking.log_images:
            s.tracker.log_artifact(folder / "grid.png", f"samples/step-{step:07d}")

    def _grid(self, step: int) -> None:
        s = self.s
        self.grid_decoder = self.grid_decoder or decoder_for(s.manifest, str(s.device))
        grid = image_grid(sample_images(
            s.ema.module, self.grid_decoder, count=GRID_SAMPLES, num_classes=s.num_classes,
            seed=s.sampling_seed, latent_shape=tuple(s.manifest["latent_shape"]),
            sampler=self.config.sampler, steps=self.config.steps,
            cfg_scale=self.config.cfg_scales[0], guidance_channels=self.config.guidance_channels))
        s.tracker.log_image(grid, f"samples/step-{step:07d}.png")


def save_checkpoint(s: Session, done: int, loss: float | None) -> None:
    s.hashes.flush()
    healthy = s.guard.judge_checkpoint(s.engine.module)
    path = s.store.save(s.engine, s.ema, {"step": done, "signature": s.signature,
                                          "window": s.window.state(), **s.guard.state()},
                        healthy=healthy)
    if s.emissions:
        s.emissions.checkpoint()
    if s.placement.on_checkpoint:
        s.placement.on_checkpoint(path, {"step": done, "healthy": int(healthy),
                                         **({"loss": loss} if loss is not None else {})})


def divergence(s: Session, step: int) -> NonFiniteLoss:
    """The error that stops a diverged run, after rolling its checkpoints back to the newest
    healthy one (the later ones move to checkpoints/diverged/)."""
    problem = (f"{s.run_name}: {s.guard.streak} optimiser steps in a row had a non-finite "
               f"loss or gradient (up to step {step + 1}); stopped.")
    healthy = s.store.roll_back_to_healthy()
    if healthy is None:
        return NonFiniteLoss(
            f"{problem} No checkpoint was written before the divergence began, so there is "
            f"none to resume from: delete {s.run_dir} and train again with a lower train.lr, "
            "after checking the data, or in another precision.")
    s.tracker.forget_steps_after(healthy["step"])
    s.tracker.set_tags({f"diverged_at_step_{step + 1}":
                        f"lr {s.train.lr!r}; rolled back to step {healthy['step']}"})
    return NonFiniteLoss(
        f"{problem} The run now resumes from the last healthy checkpoint, "
        f"{s.store.folder / healthy['tag']} (step {healthy['step']}); any later ones are in "
        f"{s.store.folder / 'diverged'}. To resume with a lower learning rate, set train.lr "
        "(or train.per_model.<model>.lr) and add lr to train.resume_changes in params.yaml, "
        "then run dvc repro train again; or check the data, or use another precision.")


def interruption(s: Session, completed: int) -> str:
    """Where an interrupted run stopped and how it goes on."""
    latest = s.store.latest()
    if latest is None:
        return (f"{s.run_name}: interrupted at step {completed}, before its first "
                "checkpoint; the same command starts it afresh")
    return (f"{s.run_name}: interrupted at step {completed}; the last checkpoint is "
            f"{s.store.folder / latest['tag']} (step {latest['step']}), from which the same "
            "command (or dvc repro) resumes it")


def finish(s: Session, status: str, completed: int) -> dict:
    """Closes the run's records (summary.json, MLflow, emissions) and returns the summary."""
    summary = {"model": s.model_name, "seed": s.seed, "steps": completed, "status": status,
               "run_dir": str(s.run_dir), "run_id": s.tracker.run_id}
    if s.emissions:
        totals = s.emissions.stop()
        s.tracker.log_metrics(totals, step=completed)
        summary["emissions"] = totals
    if s.is_main and status == "FINISHED":
        final = s.store.latest_ema()
        s.tracker.log_artifact(final, "ema")
        summary["ema_weights"] = str(final)
    s.tracker.close(status=status)
    if s.is_main:
        write_json_atomic(s.run_dir / "summary.json", summary)
    return summary
