"""Everything one training run holds, set up once: data, model, EMA, the DeepSpeed engine, the
resumed checkpoint, MLflow tracking and the emissions meter."""
from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dice_core.config import EmissionsParams, TrainingJob, TrainParams
from dice_core.data import make_loader, read_latent_manifest
from dice_core.devices import pick_device
from dice_core.diffusion import create_diffusion
from dice_core.durable import write_json_atomic
from dice_core.ema import create_ema
from dice_core.models import build_model, compile_model, get_preset, variant_of
from dice_core.models.provenance import data_identity, start_from
from dice_core.tracking import EmissionsMeter, RunTracker

from .checkpoint import CheckpointStore, warn_if_short_of_room
from .engine import deepspeed_config, initialize_engine, model_dtype, resolve_precision
from .health import DivergenceGuard, LossWindow
from .layout import BatchLayout, batch_layout
from .optim import FiniteAdamW
from .steps import InputHashLog, PrecisionAdapter


@dataclass
class Placement:
    """Where this copy of the loop runs."""
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None
    parent_run_id: str | None = None
    on_checkpoint: Callable[[Path, dict], None] | None = None   # Ray reports through this


@dataclass
class Session:
    model_name: str
    job: TrainingJob        # already laid over with the model's per_model settings
    placement: Placement
    run_dir: Path
    manifest: dict
    layout: BatchLayout
    device: torch.device
    precision: str
    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: FiniteAdamW
    engine: object
    adapter: PrecisionAdapter
    diffusion: object
    signature: dict
    store: CheckpointStore
    start_step: int
    window: LossWindow
    guard: DivergenceGuard
    tracker: RunTracker
    emissions: EmissionsMeter | None
    loader: object
    hashes: InputHashLog

    @property
    def train(self) -> TrainParams:
        return self.job.train

    @property
    def seed(self) -> int:
        """The training seed: initial weights, data order, diffusion inputs."""
        return self.job.training_seed

    @property
    def sampling_seed(self) -> int:
        """The evaluations' labels and noise: the same for every run."""
        return self.job.seed

    @property
    def run_name(self) -> str:
        return self.job.run_name(self.model_name)

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"]

    @property
    def is_main(self) -> bool:
        return self.placement.rank == 0


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def open_session(job: TrainingJob, model_name: str, placement: Placement) -> Session:
    train = job.train
    manifest = read_latent_manifest(train.data)
    layout = batch_layout(train.global_batch, train.micro_batch, placement.world_size)
    device = placement.device or pick_device(train.device)
    precision = resolve_precision(train.precision, device)
    run_dir = job.run_dir(model_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    model, ema, optimizer, engine, ds_config = build_engine(
        model_name, train, job.training_seed, manifest, layout, precision, device)
    signature = run_signature(model_name, model, job, precision, layout, placement, manifest)
    if placement.rank == 0:
        warn_if_short_of_room(run_dir, model, precision)
    store = CheckpointStore(run_dir, placement.rank, train.keep_checkpoints)
    state = resume(store, engine, ema, optimizer, signature, train)
    if placement.rank == 0:   # only now: a refused resume leaves the run folder's record as it was
        write_json_atomic(run_dir / "deepspeed_config.json", ds_config)
    start_step = state.get("step", 0)
    tracker = open_tracker(job, model_name, run_dir, placement)
    if start_step == 0:
        tracker.log_params(run_params(model_name, model, job, precision, layout, placement,
                                      manifest))
    else:   # a run folder from before training seeds (all seed 42) gains its tags here
        tracker.set_tags(run_tags(job, model_name))
        record_resume_changes(tracker, state["signature"], signature, train.resume_changes,
                              start_step)
    loader = make_loader(train.data, batch_size=layout.micro_batch, seed=job.training_seed,
                         rank=placement.rank, world_size=placement.world_size,
                         num_workers=train.loader_workers,
                         start_batch=start_step * layout.accumulation)
    return Session(
        model_name=model_name, job=job, placement=placement, run_dir=run_dir,
        manifest=manifest, layout=layout, device=device, precision=precision, model=model,
        ema=ema, optimizer=optimizer, engine=engine,
        adapter=PrecisionAdapter(engine, model_dtype(precision)),
        diffusion=create_diffusion(timestep_respacing=""), signature=signature, store=store,
        start_step=start_step, window=LossWindow.from_state(state.get("window")),
        guard=DivergenceGuard.from_state(state, train.max_nonfinite_steps,
                                         train.healthy_loss_factor),
        tracker=tracker, emissions=open_emissions(job.emissions, run_dir, placement, device),
        loader=loader,
        hashes=InputHashLog(run_dir / f"input_hashes.rank{placement.rank}.txt", start_step))


def build_engine(model_name: str, train: TrainParams, seed: int, manifest: dict,
                 layout: BatchLayout, precision: str, device: torch.device):
    channels, size, _ = manifest["latent_shape"]
    torch.manual_seed(seed)  # the same initial weights for a given model, in every run
    model = build_model(model_name, in_channels=channels, input_size=size,
                        num_classes=manifest["num_classes"], **train.model_overrides)
    model.trained_on = data_identity(manifest)    # recorded in every weights file it writes
    if train.init_weights:
        start_from(model, train.init_weights, manifest, train.data)
    model.set_activation_checkpointing(train.activation_checkpointing)
    ema = create_ema(model, train.ema_decay, train.ema_warmup)
    if train.compile:      # after the EMA's copy: the EMA is compiled for sampling, if at all
        compile_model(model)
    optimizer = FiniteAdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    ds_config = deepspeed_config(layout, precision, train.zero_stage,
                                 train.initial_loss_scale_power)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    engine = initialize_engine(model.to(device), optimizer, ds_config)
    ema.to(device)
    return model, ema, optimizer, engine, ds_config


def run_signature(model_name: str, model, job: TrainingJob, precision: str, layout: BatchLayout,
                  placement: Placement, manifest: dict) -> dict:
    """What a checkpoint must agree with to be resumed by this run."""
    train = job.train
    return {"model": model_name, "model_config": model.preset_config,
            "precision": precision, "global_batch": layout.global_batch,
            "micro_batch": layout.micro_batch, "world_size": placement.world_size,
            "seed": job.training_seed, "lr": train.lr, "weight_decay": train.weight_decay,
            "ema_decay": train.ema_decay, "ema_warmup": train.ema_warmup,
            "loader_workers": train.loader_workers, "data": manifest["params_hash"],
            "init_weights": train.init_weights}


def resume(store: CheckpointStore, engine, ema, optimizer: FiniteAdamW, signature: dict,
           train: TrainParams) -> dict:
    """The latest checkpoint's loop state ({} for a fresh run), its weights, optimiser and EMA
    loaded. The optimiser settings are this run's: DeepSpeed restores the checkpoint's, which
    differ when train.resume_changes let them."""
    state = store.load(engine, ema, signature, tuple(train.resume_changes)) or {}
    for group in optimizer.param_groups:
        group["lr"], group["weight_decay"] = train.lr, train.weight_decay
    return state


def run_tags(job: TrainingJob, model_name: str) -> dict:
    """What the MLflow UI groups runs by: the model, its training seed and what it ablates."""
    return {"model": model_name, "seed": str(job.training_seed),
            "variant": variant_of(model_name), "family": get_preset(model_name).family}


def open_tracker(job: TrainingJob, model_name: str, run_dir: Path,
                 placement: Placement) -> RunTracker:
    """The run's MLflow child run, tagged when it is created."""
    tracking = job.tracking
    return RunTracker(tracking.uri, tracking.experiment, run_dir / "tracking",
                      run_name=job.run_name(model_name), parent_run_id=placement.parent_run_id,
                      tags=run_tags(job, model_name), enabled=placement.rank == 0,
                      retry_seconds=tracking.retry_seconds, once_per_step=True)


def run_params(model_name: str, model, job: TrainingJob, precision: str, layout: BatchLayout,
               placement: Placement, manifest: dict) -> dict:
    return {"model": model_name, "model_config": model.preset_config,
            "train": job.train.model_dump(), "seed": job.training_seed,
            "sampling_seed": job.seed,
            "precision": precision, "accumulation": layout.accumulation,
            "world_size": placement.world_size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "data_params_hash": manifest["params_hash"],
            "data_encoder": manifest["encoder"], "git_commit": git_commit()}


def record_resume_changes(tracker: RunTracker, saved: dict, signature: dict,
                          allowed: list[str], step: int) -> None:
    """What train.resume_changes let differ from the checkpoint, as the tag
    ``resumed_at_step_<step>`` (MLflow keeps a parameter's first value for good)."""
    changes = [f"{key}: {saved[key]!r} -> {signature[key]!r}" for key in allowed
               if saved.get(key) != signature[key]]
    if changes:
        print(f"resuming at step {step} with {', '.join(changes)}")
        tracker.set_tags({f"resumed_at_step_{step}": "; ".join(changes)})


def open_emissions(emissions: EmissionsParams, run_dir: Path, placement: Placement,
                   device: torch.device) -> EmissionsMeter | None:
    if placement.rank != 0:
        return None
    meter = EmissionsMeter(run_dir / "emissions", emissions.country_iso_code,
                           gpus=placement.world_size if device.type == "cuda" else 0,
                           board_power_watts=emissions.board_power_watts,
                           grid_g_per_kwh=emissions.grid_g_per_kwh)
    meter.start()
    return meter
