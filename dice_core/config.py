"""The typed schema of params.yaml: a wrong key or value fails at once, naming its path."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from dice_core.errors import InputError
from dice_core.samplers import SAMPLERS

DEFAULT_PARAMS = Path("params.yaml")
# the settings train.resume_changes may name: a run resumes with new values of these
RESUMABLE_SETTINGS = ("lr", "weight_decay")


def _known_models(models: list[str]) -> list[str]:
    from dice_core.models import get_preset
    for name in models:
        get_preset(name)
    return models


def _distinct(values: list) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"{values} names a value twice: list each once")
    return values


ModelNames = Annotated[list[str], AfterValidator(_known_models), Field(min_length=1),
                       AfterValidator(_distinct)]
TrainingSeeds = Annotated[list[int], Field(min_length=1), AfterValidator(_distinct)]

# The training seed whose runs keep the folder and stage of the model's name (runs/dice-t,
# train@dice-t): the one every run had before training seeds were a dimension.
FIRST_TRAINING_SEED = 42


def run_name(model: str, seed: int) -> str:
    """The run of ``model`` trained with ``seed``: its folder, stage key and MLflow run name."""
    return model if seed == FIRST_TRAINING_SEED else f"{model}-s{seed}"


class RunSpec(BaseModel):
    """One training run: a model and its training seed."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str
    seed: int


def expected_runs(models: list[str], seeds: list[int]) -> dict[str, dict]:
    """train.runs as it must read: one run per (model, seed), seed by seed."""
    return {run_name(model, seed): {"model": model, "seed": seed}
            for seed in seeds for model in models}


# Classifier-free guidance scales, DiT's s (1 = none): the first is the headline, the others are
# evaluated on the same samples' noise and reported with a suffix (fd_effnet_cfg3).
CfgScales = Annotated[list[Annotated[float, Field(ge=0, allow_inf_nan=False)]],
                      Field(min_length=1), AfterValidator(_distinct)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StaticParams(Section):
    """Static analysis (Table 2): parameters, multiply-adds, FLOPs, samples/s."""
    models: ModelNames
    model_overrides: dict[str, int]
    device: str
    dtype: Literal["float32", "float16", "bfloat16"]
    batch_size: int = Field(ge=1)
    ddpm_steps: int = Field(ge=2)
    timed_steps: int | None = Field(ge=2)
    output: str


class ShapesParams(Section):
    """The procedural coloured-shapes source (tests and quick demos)."""
    num_classes: int = Field(ge=1)
    image_size: int = Field(ge=8)
    count_per_class: dict[str, int]
    seed: int


class PrepareParams(Section):
    """Decode, ADM centre crop and resize to uint8 RGB image shards."""
    source: Literal["fashion-mnist", "imagenet", "shapes"]
    root: str | None
    download_url: str | None
    shapes: ShapesParams
    splits: list[Literal["train", "val"]] = Field(min_length=1)
    resolution: int = Field(ge=8)
    limit_per_class: int | None = Field(ge=1)
    shard_size: int = Field(ge=1)
    workers: int = Field(ge=0)
    max_corrupt_fraction: float = Field(ge=0.0, le=1.0)
    output: str


class AutoencoderParams(Section):
    """A small diffusers.AutoencoderKL trained on the prepared images: the embedded latent
    space (encode.encoder vae with encode.vae pointing at ``output``). With ``pretrained`` (a
    local diffusers folder, such as a copy of stabilityai/sd-vae-ft-ema) nothing is trained:
    that autoencoder is checked and written to ``output``."""
    output: str
    pretrained: str | None
    split: Literal["train", "val"]
    image_channels: int = Field(ge=1, le=3)     # grey data stays one channel
    latent_channels: int = Field(ge=1)
    block_out_channels: list[int] = Field(min_length=1)
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    kl_weight: float = Field(ge=0)
    holdout: int = Field(ge=1)                # images kept out to measure reconstruction
    device: str


class EncodeParams(Section):
    """VAE moments (or pixels) of every prepared image and its mirror, as latent shards."""
    encoder: Literal["pixels", "vae"]
    vae: str
    input: str
    output: str
    batch_size: int = Field(ge=1)
    device: str
    storage_dtype: Literal["float32", "float16"]


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
    # weights to start from (fine-tuning): a `dice import`ed or trained .safetensors file
    init_weights: str | None = None


class TrainParams(Section):
    """One training loop for every model (DESIGN.md §4): DeepSpeed, locally or on Ray Train."""
    models: ModelNames
    # the training seeds (initialisation, data order, noise, timesteps): one run per model each
    seeds: TrainingSeeds
    # one entry per (model, seed), named by run_name: written by `dice runs` (DVC cannot
    # multiply two lists into stage names of its own choosing), checked against the two
    runs: dict[str, RunSpec]
    data: str
    output: str
    steps: int = Field(ge=1)
    global_batch: int = Field(ge=1)
    micro_batch: int | None = Field(ge=1)   # per worker; None = no accumulation
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    ema_decay: float = Field(ge=0, lt=1)
    ema_warmup: bool     # decay min(ema_decay, (1 + n) / (10 + n)) after n updates
    precision: Literal["auto", "fp16", "bf16", "fp32"]
    activation_checkpointing: bool
    compile: bool               # torch.compile the model's forward passes
    zero_stage: int = Field(ge=0, le=2)   # stage 3 would hide forward_stages from ZeRO
    initial_loss_scale_power: int = Field(ge=0, le=32)
    log_every: int = Field(ge=1)
    ckpt_every: int = Field(ge=1)
    eval_every: int = Field(ge=1)
    keep_checkpoints: int = Field(ge=1)
    max_nonfinite_steps: int = Field(ge=1)
    # a checkpoint is healthy while the loss stays under this multiple of the run's lowest
    healthy_loss_factor: float = Field(gt=1)
    # settings a resumed run may change from its checkpoint's (after a divergence, say)
    resume_changes: list[Literal[RESUMABLE_SETTINGS]]
    loader_workers: int = Field(ge=0)
    device: str
    backend: Literal["local", "ray"]
    workers: int = Field(ge=1)
    ray_address: str | None   # None: start a local cluster; "auto" or "ray://host:port"
    model_overrides: dict[str, float | int]
    # one entry per model of `models`, {} for none: DVC tracks each entry on its own, so that
    # changing one model's settings retrains that model only
    per_model: dict[str, ModelSettings]
    init_weights: str | None     # weights to start from (fine-tuning), usually set per model

    @model_validator(mode="after")
    def _every_model_has_settings(self) -> TrainParams:
        missing = [name for name in self.models if name not in self.per_model]
        if missing:
            entries = ", ".join(f"{name}: {{}}" for name in missing)
            raise ValueError(f"per_model has no entry for {', '.join(missing)}: add "
                             f"{entries} under train.per_model (DVC tracks each model's entry)")
        return self

    @model_validator(mode="after")
    def _runs_follow_models_and_seeds(self) -> TrainParams:
        expected = expected_runs(self.models, self.seeds)
        if {name: run.model_dump() for name, run in self.runs.items()} != expected:
            raise ValueError("runs does not list one run per model of train.models and seed of "
                             "train.seeds: run `dice runs` to write it (make repro does)")
        return self

    def run_specs(self) -> list[RunSpec]:
        return list(self.runs.values())

    def for_model(self, name: str) -> TrainParams:
        """These settings with ``per_model[name]`` laid over them."""
        return self.model_copy(update=self.per_model[name].model_dump(exclude_none=True))


class InTrainingEvaluation(Section):
    """What evaluations inside training change from the final one (None = the same)."""
    samples: int | None = Field(ge=2)
    sampler: Literal[SAMPLERS] | None
    steps: int | None = Field(ge=2)
    cfg_scales: CfgScales | None


class EvaluateParams(Section):
    """Sampling and ADM metrics (DESIGN.md §4): in training every train.eval_every steps, and
    standalone on any checkpoint. Only the Inception network's results are called FID/sFID/IS;
    effnet is the offline EfficientNet-Lite0 feature space (fd_effnet, ...). Guidance:
    ``cfg_scales`` (see CfgScales) on the first ``guidance_channels`` latent channels (None:
    all; 3: DiT's released sampler)."""
    samples: int = Field(ge=2)
    sampler: Literal[SAMPLERS]
    steps: int = Field(ge=2)
    cfg_scales: CfgScales
    guidance_channels: int | None = Field(ge=1)
    batch_size: int = Field(ge=1)
    feature_network: Literal["inception", "effnet"]
    inception_weights: str | None
    reference: str
    reference_split: Literal["train", "val"]
    reference_batch: str | None   # an OpenAI ADM reference batch to build it from instead
    # ADM's conventions (None: ADM's for Inception, the exact trace and float32 for effnet)
    fd_square_root: Literal["adm", "exact"] | None
    pr_distances: Literal["float16", "float32"] | None
    classifier: str | None   # class accuracy when it exists
    device: str
    compile: bool               # torch.compile the sampled model's forward
    output: str
    in_training: InTrainingEvaluation

    def for_training(self) -> EvaluateParams:
        changes = {k: v for k, v in self.in_training.model_dump().items() if v is not None}
        return self.model_copy(update=changes)


class ClassifierParams(Section):
    """The small classifier of real images that scores generated samples' classes."""
    output: str
    split: Literal["train", "val"]
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    input_size: int = Field(ge=8)
    holdout_fraction: float = Field(gt=0, lt=1)
    device: str


class ReportParams(Section):
    """The paper's Tables 1-2 and Figures 11-13 for the models of train.models."""
    output: str
    device: str          # where Table 2's samples/s is measured, for every model
    ddpm_steps: int = Field(ge=2)
    timed_steps: int | None = Field(ge=2)
    bootstrap: int = Field(ge=10)            # resamples behind each 95% interval


class TrackingParams(Section):
    """MLflow: where runs go. None = ./mlflow.db (sqlite); http://host:port = a server."""
    uri: str | None
    experiment: str
    log_images: bool
    retry_seconds: float = Field(gt=0)   # how often an unreachable server is retried


class EmissionsParams(Section):
    """codecarbon's offline tracker, and the paper's GPU-hours x board power x grid estimate
    (params.yaml's 350 W and 560 g/kWh reproduce the paper's 200 GPU-hours -> 39.2 kg)."""
    country_iso_code: str
    board_power_watts: float = Field(gt=0)
    grid_g_per_kwh: float = Field(ge=0)


class Params(Section):
    seed: int
    static: StaticParams
    prepare: PrepareParams
    autoencoder: AutoencoderParams
    encode: EncodeParams
    train: TrainParams
    evaluate: EvaluateParams
    classifier: ClassifierParams
    report: ReportParams
    tracking: TrackingParams
    emissions: EmissionsParams


class TrainingJob(Section):
    """What training reads, and all it reads: the sections the train stage's ``params:`` in
    dvc.yaml are taken from. ``seed`` is the sampling seed of the evaluations (the same for
    every run, so that they are paired); ``training_seed`` is the run's own (``seeded``)."""
    seed: int
    training_seed: int = FIRST_TRAINING_SEED
    train: TrainParams
    evaluate: EvaluateParams
    tracking: TrackingParams
    emissions: EmissionsParams

    @classmethod
    def of(cls, params: Params) -> TrainingJob:
        return cls(**{name: getattr(params, name) for name in cls.model_fields
                      if name in Params.model_fields})

    def for_model(self, name: str) -> TrainingJob:
        """This job with ``train.per_model[name]`` applied to ``train``."""
        return self.model_copy(update={"train": self.train.for_model(name)})

    def seeded(self, training_seed: int) -> TrainingJob:
        return self.model_copy(update={"training_seed": training_seed})

    def run_name(self, model: str) -> str:
        return run_name(model, self.training_seed)

    def run_dir(self, model: str) -> Path:
        """The run folder of ``model`` trained with this job's training seed."""
        return Path(self.train.output) / self.run_name(model)


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
