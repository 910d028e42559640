"""Atomic training checkpoints: DeepSpeed's engine state (weights, optimiser, loss scale), the
EMA weights and the loop's own state, under ``<run>/checkpoints/step-NNNNNNN``.

A checkpoint is written under ``step-NNNNNNN.partial`` and renamed when every rank has
finished, then ``latest.json`` is replaced to point at it; a run killed at any moment leaves
either the previous checkpoint or the new one as the latest, never a half-written one.
``latest.json`` also names the newest *healthy* checkpoint (see health.py), which pruning keeps
until a later one is healthy, and to which a run that diverged rolls back.

Each checkpoint records the size and sha256 of its files in ``checksums.json`` (torch's and
safetensors' files do not notice a flipped byte). A resume whose latest checkpoint is missing or
damaged says so and resumes from the newest intact healthy one before it, and that run prunes
nothing; checkpoints written before checksums were recorded are trusted as they are.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from dice_core.config import FIRST_TRAINING_SEED, RESUMABLE_SETTINGS
from dice_core.durable import read_json, replace_atomically, reporting_full_disk, write_json_atomic
from dice_core.errors import InputError
from dice_core.faults import fault_point
from dice_core.models import builder_defaults
from dice_core.models.serialization import save_model

from .engine import model_dtype

LATEST = "latest.json"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.json"
CHECKSUMS = "checksums.json"
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
    if "seed" in problems:
        message += ("\nIts training seed differs. A run folder from before training seeds "
                    "(train.seeds) was trained with the top-level seed, and is adopted as the "
                    f"run of seed {FIRST_TRAINING_SEED} only when that seed was "
                    f"{FIRST_TRAINING_SEED}: rename it to <model>-s<its seed> and add its seed "
                    "to train.seeds to keep it.")
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
        self.prunes = True      # False once a resume passed over a damaged or missing one

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
        """All ranks call this; ``state`` (JSON) holds the step and the run's signature. A save
        that fails (a full disk: DiskFull) leaves no part of the checkpoint behind."""
        tag = f"step-{state['step']:07d}"
        partial = self.folder / f"{tag}.partial"
        if self.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
        barrier()
        try:
            self._write(partial, engine, ema, {**state, "healthy": healthy})
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)    # a full disk gets its room back
            raise
        final = self.folder / tag
        if self.rank == 0:
            point = {"tag": tag, "step": state["step"]}
            kept_healthy = point if healthy else self.healthy()
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            fault_point("checkpoint")     # the folder is final, latest.json not moved yet
            write_json_atomic(self.folder / LATEST, {**point, "healthy": kept_healthy})
            self._prune()
        barrier()
        return final

    def _write(self, partial: Path, engine, ema, state: dict) -> None:
        """The checkpoint's files under ``partial``, then (rank 0, once every rank's are there)
        their checksums."""
        durable_saves(engine)
        with reporting_full_disk(partial):     # what DeepSpeed writes itself (recovery scripts)
            engine.save_checkpoint(str(self.folder), tag=partial.name, save_latest=False)
        fault_point("checkpoint")         # DeepSpeed's files written, the EMA's not yet
        if self.rank == 0:
            save_model(ema.module, partial / EMA_FILE)
            write_json_atomic(partial / STATE_FILE,
                              {**state, "ema_updates": int(ema.n_averaged.item())})
        barrier()
        if self.rank == 0:
            write_json_atomic(partial / CHECKSUMS, file_checksums(partial))

    def _finished(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("step-*") if not p.name.endswith(".partial"))

    def _prune(self) -> None:
        if not self.prunes:
            return
        healthy = self.healthy()
        for old in self._finished()[:-self.keep]:
            if healthy is None or old.name != healthy["tag"]:
                shutil.rmtree(old, ignore_errors=True)

    def adopt(self, tag: str) -> None:
        """Makes the finished checkpoint ``tag`` (copied in from elsewhere, such as Ray's
        storage) the latest; the healthy one is the newest up to it whose own state.json says
        it is healthy."""
        states = {folder.name: json.loads((folder / STATE_FILE).read_text())
                  for folder in self._finished()
                  if folder.name <= tag and (folder / STATE_FILE).is_file()}
        healthy = [name for name, state in states.items() if state.get("healthy")]

        def point(name: str) -> dict:
            return {"tag": name, "step": states[name]["step"]}
        write_json_atomic(self.folder / LATEST,
                          {**point(tag), "healthy": point(healthy[-1]) if healthy else None})

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

    def resumable(self) -> dict | None:
        """The checkpoint to resume, ``{"tag", "step"}``: the latest, or when that one is
        missing or damaged, the newest intact healthy one before it (said, and then this run
        prunes nothing); None when there is no latest.json. Refused when none is intact."""
        path = self.folder / LATEST
        if not path.is_file():
            return None
        latest = json.loads(path.read_text())["tag"]
        problems = []
        for folder in [self.folder / latest] + [p for p in reversed(self._finished())
                                                if p.name < latest]:
            problem = damage(folder)
            if problem is None and problems and not read_state(folder).get("healthy"):
                problem = f"{folder} is intact but was not healthy"
            if problem is None:
                break
            problems.append(problem)
        else:
            raise CheckpointMismatch(
                f"no intact checkpoint to resume in {self.folder}:\n  " + "\n  ".join(problems)
                + f"\nDelete {self.folder.parent} to start this run afresh "
                "(then dvc repro train).")
        point = {"tag": folder.name, "step": read_state(folder)["step"]}
        if problems:
            self.prunes = False
            if self.rank == 0:
                print(f"{'; '.join(problems)}: resuming from {folder} (step {point['step']}), "
                      "the newest intact healthy checkpoint; this run deletes no checkpoint (a "
                      "damaged one is replaced when training reaches its step again)",
                      file=sys.stderr)
        return point

    def load(self, engine, ema, signature: dict, may_differ: tuple[str, ...] = ()) -> dict | None:
        """Restores the checkpoint ``resumable`` picks into ``engine`` and ``ema``; returns its
        state, or None when there is none. Refuses one written for another model or
        configuration; the signature keys in ``may_differ`` (train.resume_changes) may have
        changed. After passing over a damaged one, latest.json names the one resumed."""
        latest = self.resumable()
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
        if not self.prunes and self.rank == 0:
            write_json_atomic(self.folder / LATEST, {**latest, "healthy": latest})
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


def durable_saves(engine) -> None:
    """Make DeepSpeed write its checkpoint files through durable.replace_atomically: each is
    whole under its name or absent, and a full disk raises DiskFull naming the file (torch.save
    to a file name raises an error that says neither)."""
    serialization = engine.checkpoint_engine.zipfile_serialization

    def save(state_dict, path):
        replace_atomically(path, lambda stream: torch.save(
            state_dict, stream, _use_new_zipfile_serialization=serialization))
    engine.checkpoint_engine.save = save


def sha256_of_file(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def file_checksums(folder: Path) -> dict[str, dict]:
    """{path under ``folder``: {"bytes", "sha256"}} of every file in it."""
    return {str(path.relative_to(folder)): {"bytes": path.stat().st_size,
                                            "sha256": sha256_of_file(path)}
            for path in sorted(folder.rglob("*")) if path.is_file()}


def read_state(folder: Path) -> dict:
    return json.loads((folder / STATE_FILE).read_text())


def damage(folder: Path) -> str | None:
    """What makes the checkpoint in ``folder`` unusable (missing, a file cut short or changed
    since it was written), or None. One without checksums (written before they were recorded)
    is trusted as it is."""
    if not folder.is_dir():
        return f"{folder} is missing"
    if not (folder / STATE_FILE).is_file():
        return f"{folder / STATE_FILE} is missing"
    try:
        recorded = read_json(folder / CHECKSUMS) or {}
    except ValueError:
        return f"{folder / CHECKSUMS} is damaged"
    for name, written in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != written["bytes"]:
            return (f"{path} is damaged: {path.stat().st_size} bytes, {written['bytes']} when "
                    "it was written")
        if sha256_of_file(path) != written["sha256"]:
            return f"{path} is damaged: its content changed since it was written (checksum)"
    return None


def checkpoint_bytes(model: torch.nn.Module, precision: str) -> int:
    """About the size of one checkpoint: the weights as trained, the float32 EMA, Adam's two
    float32 moments and, in fp16 or bf16, DeepSpeed's float32 master weights."""
    parameters = sum(p.numel() for p in model.parameters())
    master = 0 if precision == "fp32" else 4
    return parameters * (model_dtype(precision).itemsize + 4 + 8 + master)


def warn_if_short_of_room(run_dir: Path, model: torch.nn.Module, precision: str) -> None:
    """Says so, before training starts, when the run folder's disk cannot hold two
    checkpoints (the next one is written before the oldest is pruned)."""
    needed = 2 * checkpoint_bytes(model, precision)
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        print(f"warning: the disk of {run_dir} has {free / 1e6:,.1f} MB free, and two "
              f"checkpoints of this model take about {needed / 1e6:,.1f} MB: free some space "
              "there or set train.output to a larger disk, or a checkpoint save will stop the "
              "run (it resumes from the last checkpoint once there is room)", file=sys.stderr)


def ema_weights_path(run_dir: str | os.PathLike) -> Path | None:
    """The EMA weights of the run's latest checkpoint (a ``load_model`` file)."""
    return CheckpointStore(run_dir).latest_ema()
