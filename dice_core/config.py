"""The typed schema of params.yaml: a wrong key or value fails at once, naming its path."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_PARAMS = Path("params.yaml")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StaticParams(Section):
    """Static analysis (Table 2): parameters, multiply-adds, FLOPs, samples/s."""
    models: list[str] = Field(min_length=1)
    model_overrides: dict[str, int] = Field(default_factory=dict)
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int = Field(1, ge=1)
    ddpm_steps: int = Field(250, ge=2)
    timed_steps: int | None = Field(None, ge=2)
    output: str = "results/static.json"

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        from dice_core.models import get_preset
        for name in models:
            get_preset(name)
        return models


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


class EncodeParams(Section):
    """VAE moments (or pixels) of every prepared image and its mirror, as latent shards."""
    encoder: Literal["pixels", "vae"] = "pixels"
    vae: str = "stabilityai/sd-vae-ft-ema"
    input: str = "data/prepared"
    output: str = "data/latents"
    batch_size: int = Field(64, ge=1)
    device: str = "auto"
    storage_dtype: Literal["float32", "float16"] = "float32"


class Params(Section):
    seed: int = 42
    static: StaticParams
    prepare: PrepareParams
    encode: EncodeParams


class ParamsError(ValueError):
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
