"""The training loop, the same for every model and for every backend.

Set-up is one call (session.py), then one optimiser step per iteration (steps.py) and the
periodic jobs, one call each (periodic.py): log every ``train.log_every`` steps, evaluate every
``train.eval_every``, checkpoint every ``train.ckpt_every`` and after the last step (the last
two timed as ``time/eval_s`` and ``time/checkpoint_s``, outside the steps' throughput).
"""
from __future__ import annotations

from tqdm.auto import tqdm

from dice_core.config import TrainingJob
from dice_core.data import check_lanes
from dice_core.faults import fault_point

from .errors import TrainingInterrupted
from .periodic import (
    Evaluation,
    divergence,
    due,
    finish,
    interruption,
    log_progress,
    save_checkpoint,
    timed,
)
from .run_lock import RunFolderLock
from .session import Placement, open_session
from .steps import optimiser_step


def train_model(job: TrainingJob, model_name: str, placement: Placement | None = None) -> dict:
    """Trains ``model_name`` with the job's training seed to ``train.steps`` (resuming its run
    folder) and returns a summary. Refused at once when another process trains in the same run
    folder."""
    placement = placement or Placement()
    job = job.for_model(model_name)
    # before the engine and the MLflow run: too many loader lanes for the shards is refused now
    check_lanes(job.train.data, placement.world_size, job.train.loader_workers)
    with RunFolderLock(job.run_dir(model_name), enabled=placement.rank == 0):
        return _train(job, model_name, placement)


def _train(job: TrainingJob, model_name: str, placement: Placement) -> dict:
    s = open_session(job, model_name, placement)
    train = s.train
    evaluate = Evaluation(s)
    bar = tqdm(total=train.steps, initial=s.start_step, desc=s.run_name, unit="step",
               disable=not s.is_main)
    status, completed = "FAILED", s.start_step
    s.window.restart_clock()
    try:
        for step in range(s.start_step, train.steps):
            fault_point("step")
            loss = optimiser_step(s, step)
            if s.guard.observe(loss):
                raise divergence(s, step)
            if loss is not None:
                s.ema.update_parameters(s.engine.module)
            s.window.add(loss)
            done = completed = step + 1
            bar.update(1)
            if due(done, train.log_every, train.steps):
                log_progress(s, done, bar)
            if due(done, train.eval_every, train.steps) and s.is_main:
                timed(s, "time/eval_s", done, evaluate, done)
            if due(done, train.ckpt_every, train.steps):
                timed(s, "time/checkpoint_s", done, save_checkpoint, s, done, loss)
        status = "FINISHED"
    except KeyboardInterrupt:        # Ctrl-C: the MLflow run ends KILLED, the user reads where
        status = "KILLED"
        raise TrainingInterrupted(interruption(s, completed)) from None
    finally:
        bar.close()
        s.hashes.close()
        summary = finish(s, status, completed)
    return summary
