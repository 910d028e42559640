"""Atomic training checkpoints: DeepSpeed's engine state (weights, optimiser, loss scale), the
EMA weights and the loop's own state, under ``<run>/checkpoints/step-NNNNNNN``.

A checkpoint is written under ``step-NNNNNNN.partial`` and renamed when every rank has
finished, then ``latest.json`` is replaced to point at it; a run killed at any moment leaves
either the previous checkpoint or the new one as the latest, never a half-written one.
``latest.json`` also names the newest *healthy* checkpoint (see health.py), which pruning keeps
until a later one is healthy, and to which a run that diverged rolls back.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from dice_core.config import RESUMABLE_SETTINGS
from dice_core.durable import write_json_atomic
from dice_core.errors import InputError
from dice_core.models import builder_defaults
from dice_core.models.serialization import save_model

LATEST = "latest.json"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.json"
DIVERGED = "diverged"


class CheckpointMismatch(InputError):
    pass


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def differences(saved: dict, current: dict, prefix: str = "") -> dict[str, str]:
    """{signature key: how the checkpoint's value and this run's differ}."""
    problems = {}
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if key == "model_config" and isinstance(old, dict) and isinstance(new, dict):
            # a field set to the builder's default is the same model as one left unset
            defaults = builder_defaults(current["model"])
            problems |= differences(as_json({**defaults, **old}), as_json({**defaults, **new}),
                                    "model_config.")
        elif old != new:
            problems[f"{prefix}{key}"] = f"checkpoint has {old!r}, this run has {new!r}"
    return problems


def mismatch_message(folder: Path, run_dir: Path, problems: dict[str, str]) -> str:
    message = (f"the checkpoint in {folder} was written for another run:\n  "
               + "\n  ".join(f"{key}: {problem}" for key, problem in problems.items()))
    if "data" in problems:
        message += ("\nThe training data changed since (new latents, another encoder or "
                    "autoencoder): these checkpoints were trained on other data and are not "
                    "mixed with it.")
    message += ("\nUse another train.output folder for this configuration, or delete "
                f"{run_dir} to start this one afresh (then dvc repro train).")
    if set(problems) & set(RESUMABLE_SETTINGS):
        message += (f"\nTo resume this run with new values of {' or '.join(RESUMABLE_SETTINGS)}"
                    ", list them in train.resume_changes (for example resume_changes: [lr]).")
    return message


def without(signature: dict, keys: tuple[str, ...]) -> dict:
    return {key: value for key, value in signature.items() if key not in keys}


def as_json(value):
    """As the checkpoint's state.json reads back (tuples as lists)."""
    return json.loads(json.dumps(value))


class CheckpointStore:
    def __init__(self, run_dir: str | os.PathLike, rank: int = 0, keep: int = 2):
        self.folder = Path(run_dir) / "checkpoints"
        self.rank, self.keep = rank, keep

    def latest(self) -> dict | None:
        path = self.folder / LATEST
        if not path.is_file():
            return None
        latest = json.loads(path.read_text())
        return latest if (self.folder / latest["tag"]).is_dir() else None

    def latest_ema(self) -> Path | None:
        latest = self.latest()
        return None if latest is None else self.folder / latest["tag"] / EMA_FILE

    def healthy(self) -> dict | None:
        """The newest healthy checkpoint, ``{"tag", "step"}``, or None."""
        latest = self.latest()
        healthy = (latest or {}).get("healthy")
        return healthy if healthy and (self.folder / healthy["tag"]).is_dir() else None

    def save(self, engine, ema, state: dict, healthy: bool) -> Path:
        """All ranks call this; ``state`` (JSON) holds the step and the run's signature."""
        tag = f"step-{state['step']:07d}"
        partial = self.folder / f"{tag}.partial"
        if self.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
        barrier()
        engine.save_checkpoint(str(self.folder), tag=partial.name, save_latest=False)
        if self.rank == 0:
            save_model(ema.module, partial / EMA_FILE)
            write_json_atomic(partial / STATE_FILE, {**state, "healthy": healthy,
                                                     "ema_updates": int(ema.n_averaged.item())})
        barrier()
        final = self.folder / tag
        if self.rank == 0:
            point = {"tag": tag, "step": state["step"]}
            kept_healthy = point if healthy else self.healthy()
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            write_json_atomic(self.folder / LATEST, {**point, "healthy": kept_healthy})
            self._prune()
        barrier()
        return final

    def _finished(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("step-*") if not p.name.endswith(".partial"))

    def _prune(self) -> None:
        healthy = self.healthy()
        for old in self._finished()[:-self.keep]:
            if healthy is None or old.name != healthy["tag"]:
                shutil.rmtree(old, ignore_errors=True)

    def roll_back_to_healthy(self) -> dict | None:
        """Makes the newest healthy checkpoint the latest again, moving the later ones under
        ``checkpoints/diverged/`` (kept for inspection); returns it, or None (then nothing
        moves) when there is none."""
        healthy = self.healthy()
        if healthy is None or self.rank != 0:
            return healthy
        for later in self._finished():
            if later.name > healthy["tag"]:
                moved = self.folder / DIVERGED / later.name
                shutil.rmtree(moved, ignore_errors=True)
                moved.parent.mkdir(exist_ok=True)
                os.replace(later, moved)
        write_json_atomic(self.folder / LATEST, {**healthy, "healthy": healthy})
        return healthy

    def load(self, engine, ema, signature: dict, may_differ: tuple[str, ...] = ()) -> dict | None:
        """Restores the latest checkpoint into ``engine`` and ``ema``; returns its state, or
        None when there is none. Refuses one written for another model or configuration; the
        signature keys in ``may_differ`` (train.resume_changes) may have changed."""
        latest = self.latest()
        if latest is None:
            return None
        folder = self.folder / latest["tag"]
        state = json.loads((folder / STATE_FILE).read_text())
        problems = differences(without(state["signature"], may_differ),
                               without(signature, may_differ))
        if problems:
            raise CheckpointMismatch(mismatch_message(folder, self.folder.parent, problems))
        weights_only_loads(engine)
        loaded, _ = engine.load_checkpoint(str(self.folder), tag=latest["tag"],
                                           load_optimizer_states=True,
                                           load_lr_scheduler_states=False)
        if loaded is None:
            raise CheckpointMismatch(f"DeepSpeed could not load the checkpoint in {folder}: "
                                     f"delete {self.folder.parent} to start afresh")
        ema.module.load_state_dict(load_file(str(folder / EMA_FILE)))
        ema.n_averaged.fill_(state["ema_updates"])
        return state


def weights_only_loads(engine) -> None:
    """Make DeepSpeed read its checkpoint files as tensors and plain containers only.

    DeepSpeed loads them with ``weights_only=False``, so a run folder from an untrusted source
    could run code at resume; its fp16 loss scaler is the one class of its own they hold."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler

    def load(path, map_location=None):
        try:
            with torch.serialization.safe_globals([DynamicLossScaler, LossScaler]):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointMismatch(
                f"{path} holds more than tensors and plain values, so it is not loaded (it "
                f"could run code): {str(error).splitlines()[0]}. Resume only from run folders "
                "this pipeline wrote; delete this one to start afresh.") from None
    engine.checkpoint_engine.load = load


def ema_weights_path(run_dir: str | os.PathLike) -> Path | None:
    """The EMA weights of the run's latest checkpoint (a ``load_model`` file)."""
    return CheckpointStore(run_dir).latest_ema()
