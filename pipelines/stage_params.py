"""A stage's section of params.yaml with the command-line flags given laid over it."""
from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from dice_core.config import DEFAULT_PARAMS, Params, ParamsError, load_params

from .health import health_problem


def add_params_argument(parser: argparse.ArgumentParser, section: str) -> None:
    parser.add_argument("--params", default=str(DEFAULT_PARAMS),
                        help=f"params.yaml to read the '{section}' section from")


# Written by `make ui` (infra/ui.sh) while its MLflow server runs.
UI_MLFLOW_URI = Path(".ui") / "mlflow_uri"


def through_running_ui(params: Params, root: Path = Path(".")) -> Params:
    """With tracking.uri null and `make ui` running, its MLflow server: the runs then go
    through the server that shows them, not into the sqlite file beside it."""
    state = root / UI_MLFLOW_URI
    if params.tracking.uri is not None or not state.is_file():
        return params
    uri = state.read_text().strip()
    if health_problem(f"{uri}/health"):
        return params     # a server that has gone: mlflow.db, as without make ui
    return params.model_copy(update={"tracking": params.tracking.model_copy(update={"uri": uri})})


def stage_params(args: argparse.Namespace, section: str,
                 flags: tuple[str, ...]) -> tuple[Params, object]:
    """(all params, the section with ``args.<key>`` laid over its ``<key>`` for each key of
    ``flags`` whose flag was given, and re-validated)."""
    params = through_running_ui(load_params(args.params))
    current = getattr(params, section)
    given = {key: getattr(args, key) for key in flags}
    return params, flags_over(type(current), current.model_dump(), given)


def flags_over(section_type: type, values: dict, flags: dict):
    """A ``section_type`` of ``values`` with every flag that is not None laid over them; a
    flag that does not validate is named as the flag."""
    given = {key: value for key, value in flags.items() if value is not None}
    try:
        return section_type.model_validate({**values, **given})
    except ValidationError as error:
        problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: "
                             f"{e['msg']}" for e in error.errors())
        raise ParamsError(problems) from None
