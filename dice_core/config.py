"""The typed schema of params.yaml: a wrong key or value fails at once, naming its path."""
from __future__ import annotations

from dice_core.errors import InputError

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError,
                      model_validator)

from dice_core.errors import InputError

DEFAULT_PARAMS = Path("params.yaml")
# the settings train.resume_changes may name: a run resumes with new values of these
RESUMABLE_SETTINGS = ("lr", "weight_decay")
# every sampler of evaluation, sampling and the benchmarks
SAMPLERS = ("ddpm", "ddim", "dpm-solver")


def _known_models(models: list[str]) -> list[str]:
    from dice_core.models import get_preset
    for name in models:
        get_preset(name)
    return models


ModelNames = Annotated[list[str], AfterValidator(_known_models), Field(min_length=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StaticParams(Section):
    """Static analysis (Table 2): parameters, multiply-adds, FLOPs, samples/s."""
    models: ModelNames
    model_overrides: dict[str, int] = Field(default_factory=dict)
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int = Field(1, ge=1)
    ddpm_steps: int = Field(250, ge=2)
    timed_steps: int | None = Field(None, ge=2)
    output: str = "results/static.json"


class ShapesParams(Section):
    """The procedural coloured-shapes source (tests and quick demos)."""
    num_classes: int = Field(4, ge=1)
    image_size: int = Field(32, ge=8)
    count_per_class: dict[str, int] = Field(default_factory=lambda: {"train": 64, "val": 16})
    seed: int = 0


class PrepareParams(Section):
    """Decode, ADM centre crop and resize to uint8 RGB image shards."""
    source: Literal["fashion-mnist", "imagenet", "shapes"] = "fashion-mnist"
    root: str | None = None
    download_url: str | None = None
    shapes: ShapesParams = Field(default_factory=ShapesParams)
    splits: list[Literal["train", "val"]] = Field(default_factory=lambda: ["train"], min_length=1)
    resolution: int = Field(32, ge=8)
    limit_per_class: int | None = Field(None, ge=1)
    shard_size: int = Field(1000, ge=1)
    workers: int = Field(0, ge=0)
    max_corrupt_fraction: float = Field(0.001, ge=0.0, le=1.0)
    output: str = "data/prepared"


class AutoencoderParams(Section):
    """A small diffusers.AutoencoderKL trained on the prepared images: the embedded latent
    space (encode.encoder vae with encode.vae pointing at ``output``). With ``pretrained`` (a
    local diffusers folder, such as a copy of stabilityai/sd-vae-ft-ema) nothing is trained:
    that autoencoder is checked and written to ``output``."""
    output: str = "data/autoencoder"
    pretrained: str | None = None
    split: Literal["train", "val"] = "train"
    image_channels: int = Field(1, ge=1, le=3)     # grey data stays one channel
    latent_channels: int = Field(4, ge=1)
    block_out_channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)
    steps: int = Field(500, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0)
    holdout: int = Field(500, ge=1)                # images kept out to measure reconstruction
    device: str = "auto"


class EncodeParams(Section):
    """VAE moments (or pixels) of every prepared image and its mirror, as latent shards."""
    encoder: Literal["pixels", "vae"] = "pixels"
    vae: str = "stabilityai/sd-vae-ft-ema"
    input: str = "data/prepared"
    output: str = "data/latents"
    batch_size: int = Field(64, ge=1)
    device: str = "auto"
    storage_dtype: Literal["float32", "float16"] = "float32"


class ModelSettings(Section):
    """What one model changes from the ``train`` settings (``train.per_model.<model>``); the
    budget (steps, batch, data, timesteps) stays the same for every model."""
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    ema_decay: float | None = Field(None, ge=0, lt=1)
    ema_warmup: bool | None = None
    micro_batch: int | None = Field(None, ge=1)
    precision: Literal["auto", "fp16", "bf16", "fp32"] | None = None
    activation_checkpointing: bool | None = None
    model_overrides: dict[str, float | int] | None = None


class TrainParams(Section):
    """One training loop for every model (DESIGN.md §4): DeepSpeed, locally or on Ray Train."""
    models: ModelNames = Field(default_factory=lambda: ["dice-t", "dit-t", "dimr-t"])
    data: str = "data/latents"
    output: str = "runs"
    steps: int = Field(35_000, ge=1)
    global_batch: int = Field(128, ge=1)
    micro_batch: int | None = Field(None, ge=1)   # per worker; None = no accumulation
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    ema_warmup: bool = False     # decay min(ema_decay, (1 + n) / (10 + n)) after n updates
    precision: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    activation_checkpointing: bool = True
    zero_stage: int = Field(0, ge=0, le=2)   # stage 3 would hide forward_stages from ZeRO
    initial_loss_scale_power: int = Field(16, ge=0, le=32)
    log_every: int = Field(100, ge=1)
    ckpt_every: int = Field(1000, ge=1)
    eval_every: int = Field(5000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_nonfinite_steps: int = Field(20, ge=1)
    # a checkpoint is healthy while the loss stays under this multiple of the run's lowest
    healthy_loss_factor: float = Field(4.0, gt=1)
    # settings a resumed run may change from its checkpoint's (after a divergence, say)
    resume_changes: list[Literal[RESUMABLE_SETTINGS]] = Field(default_factory=list)
    loader_workers: int = Field(1, ge=0)
    device: str = "auto"
    backend: Literal["local", "ray"] = "local"
    workers: int = Field(1, ge=1)
    ray_address: str | None = None   # None: start a local cluster; "auto" or "ray://host:port"
    model_overrides: dict[str, float | int] = Field(default_factory=dict)
    # one entry per model of `models`, {} for none: DVC tracks each entry on its own, so that
    # changing one model's settings retrains that model only
    per_model: dict[str, ModelSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _every_model_has_settings(self) -> "TrainParams":
        missing = [name for name in self.models if name not in self.per_model]
        if missing:
            entries = ", ".join(f"{name}: {{}}" for name in missing)
            raise ValueError(f"per_model has no entry for {', '.join(missing)}: add "
                             f"{entries} under train.per_model (DVC tracks each model's entry)")
        return self

    def for_model(self, name: str) -> "TrainParams":
        """These settings with ``per_model[name]`` laid over them."""
        return self.model_copy(update=self.per_model[name].model_dump(exclude_none=True))


class InTrainingEvaluation(Section):
    """What evaluations inside training change from the final one (None = the same)."""
    samples: int | None = Field(None, ge=2)
    sampler: Literal[SAMPLERS] | None = None
    steps: int | None = Field(None, ge=2)


class EvaluateParams(Section):
    """Sampling and ADM metrics (DESIGN.md §4): in training every train.eval_every steps, and
    standalone on any checkpoint. Only the Inception network's results are called FID/sFID/IS;
    effnet is the offline EfficientNet-Lite0 feature space (fd_effnet, ...)."""
    samples: int = Field(500, ge=2)
    sampler: Literal[SAMPLERS] = "ddpm"
    steps: int = Field(250, ge=2)
    batch_size: int = Field(50, ge=1)
    feature_network: Literal["inception", "effnet"] = "effnet"
    inception_weights: str | None = None
    reference: str = "data/reference.npz"
    reference_split: Literal["train", "val"] = "train"
    reference_batch: str | None = None   # an OpenAI ADM reference batch to build it from instead
    # ADM's conventions (None: ADM's for Inception, the exact trace and float32 for effnet)
    fd_square_root: Literal["adm", "exact"] | None = None
    pr_distances: Literal["float16", "float32"] | None = None
    classifier: str | None = "data/classifier.safetensors"   # class accuracy when it exists
    device: str = "auto"
    output: str = "results/eval"
    in_training: InTrainingEvaluation = Field(default_factory=InTrainingEvaluation)

    def for_training(self) -> "EvaluateParams":
        changes = {k: v for k, v in self.in_training.model_dump().items() if v is not None}
        return self.model_copy(update=changes)


class ClassifierParams(Section):
    """The small classifier of real images that scores generated samples' classes."""
    output: str = "data/classifier.safetensors"
    split: Literal["train", "val"] = "train"
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    input_size: int = Field(32, ge=8)
    holdout_fraction: float = Field(0.1, gt=0, lt=1)
    device: str = "auto"


class ReportParams(Section):
    """The paper's Tables 1-2 and Figures 11-13 for the models of train.models."""
    output: str = "results/report"
    device: str = "cpu"          # where Table 2's samples/s is measured, for every model
    ddpm_steps: int = Field(250, ge=2)
    timed_steps: int | None = Field(2, ge=2)
    bootstrap: int = Field(200, ge=10)            # resamples behind each 95% interval


class TrackingParams(Section):
    """MLflow: where runs go. None = ./mlflow.db (sqlite); http://host:port = a server."""
    uri: str | None = None
    experiment: str = "dice"
    log_images: bool = True
    retry_seconds: float = Field(30.0, gt=0)   # how often an unreachable server is retried


class EmissionsParams(Section):
    """codecarbon's offline tracker, and the paper's GPU-hours x board power x grid estimate
    (the defaults reproduce the paper's 200 GPU-hours -> 39.2 kg on an RTX 3090)."""
    country_iso_code: str = "USA"
    board_power_watts: float = Field(350.0, gt=0)
    grid_g_per_kwh: float = Field(560.0, ge=0)


class Params(Section):
    seed: int = 42
    static: StaticParams
    prepare: PrepareParams
    autoencoder: AutoencoderParams = Field(default_factory=AutoencoderParams)
    encode: EncodeParams
    train: TrainParams
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    classifier: ClassifierParams = Field(default_factory=ClassifierParams)
    report: ReportParams = Field(default_factory=ReportParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    emissions: EmissionsParams = Field(default_factory=EmissionsParams)

    def for_model(self, name: str) -> "Params":
        """These params with ``train.per_model[name]`` applied to ``train``."""
        return self.model_copy(update={"train": self.train.for_model(name)})


class ParamsError(InputError):
    pass


def load_params(path: str | os.PathLike = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run from the project root or pass --params FILE")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        problems = "\n".join(
            f"  {'.'.join(str(part) for part in issue['loc']) or '(top level)'}: {issue['msg']}"
            for issue in error.errors())
        raise ParamsError(f"{path} does not match the schema:\n{problems}") from None
