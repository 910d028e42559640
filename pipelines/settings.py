"""Writing params.yaml: a profile laid over it, `-S key=value` overrides, validated first.

DVC reads only params.yaml, so a profile or an override becomes part of it (as `dvc exp run -S`
does) before any stage runs; the file is replaced atomically, keeps its comments, and is
written only when the result is valid.
"""
from __future__ import annotations

import copy
import io
import tempfile
from pathlib import Path

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from dice_core.config import Params, ParamsError, expected_runs, load_params
from dice_core.durable import write_text_atomic

PROFILES = Path(__file__).resolve().parents[1] / "profiles"


def profile_path(profile: str) -> Path:
    """A profile by name (``profiles/<name>.yaml``) or by path."""
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    named = PROFILES / f"{profile}.yaml"
    if not named.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml"))) or "none"
        raise ParamsError(f"no profile {profile!r}: name one of profiles/ ({known}) or give "
                          "a .yaml file")
    return named


def merged(base: dict, layer: dict) -> dict:
    """``base`` with ``layer`` laid over it: mappings merge key by key, anything else
    (lists included) is replaced."""
    result = copy.deepcopy(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def parse_override(text: str) -> dict:
    """``train.steps=100`` -> {"train": {"steps": 100}}; the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {text!r} is not KEY=VALUE (e.g. train.steps=100)")
    layer: dict = {}
    node = layer
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)
    return layer


def _round_trip() -> YAML:
    keeper = YAML()
    keeper.preserve_quotes = True
    keeper.width = 100
    keeper.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null",
                                                                        "null"))
    return keeper


def dump(document: dict) -> str:
    stream = io.StringIO()
    _round_trip().dump(document, stream)
    return stream.getvalue()


def layered_params(params_file: Path, profile: str | None = None,
                   overrides: list[str] = ()) -> dict:
    """The params of ``params_file`` (comments kept) with the profile, then each override,
    laid over."""
    raw = _round_trip().load(params_file.read_text()) or {}
    if profile:
        raw = merged(raw, yaml.safe_load(profile_path(profile).read_text()) or {})
    for text in overrides:
        raw = merged(raw, parse_override(text))
    return with_runs(raw)


def with_runs(raw: dict) -> dict:
    """``raw`` with train.runs written from train.models and train.seeds (left alone when either
    is not a list: validation then names the key)."""
    train = raw.get("train")
    if not (isinstance(train, dict) and isinstance(train.get("models"), list)
            and isinstance(train.get("seeds"), list)):
        return raw
    runs = expected_runs(train["models"], train["seeds"])
    if isinstance(train, CommentedMap):     # params.yaml's own layout: one line per run
        runs = CommentedMap((name, CommentedMap(run)) for name, run in runs.items())
        for run in runs.values():
            run.fa.set_flow_style()
    train["runs"] = runs
    return raw


def validate(raw: dict, origin: str) -> Params:
    """``raw`` read through the schema; refused with its message, naming where it came from."""
    with tempfile.TemporaryDirectory() as folder:
        candidate = Path(folder) / "params.yaml"
        candidate.write_text(dump(raw))
        try:
            return load_params(candidate)
        except ParamsError as error:
            raise ParamsError(str(error).replace(str(candidate), origin, 1)) from None


def settled_params(params_file: str | Path, profile: str | None = None,
                   overrides: list[str] = ()) -> str:
    """The text of ``params_file`` with the profile and overrides laid over it, validated."""
    params_file = Path(params_file)
    if not params_file.is_file():
        raise ParamsError(f"{params_file} not found: run from the project root")
    raw = layered_params(params_file, profile, overrides)
    origin = " + ".join([str(params_file), *([f"profile {profile}"] if profile else []),
                         *[f"-S {text}" for text in overrides]])
    validate(raw, origin)
    return dump(raw)


def update_params(params_file: str | Path, profile: str | None = None,
                  overrides: list[str] = ()) -> bool:
    """Lay the profile and overrides over ``params_file`` and write train.runs from train.models
    and train.seeds; True when the file changed."""
    text = settled_params(params_file, profile, overrides)
    if yaml.safe_load(text) == yaml.safe_load(Path(params_file).read_text()):
        return False
    write_text_atomic(Path(params_file), text)
    return True
