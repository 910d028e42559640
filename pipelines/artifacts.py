"""Prefect artifacts of a pipeline run: Tables 1 and 2, the report with its figures, and a link
to each model's MLflow run, under keys that stay the same from run to run."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from dice_core.config import Params, load_params
from dice_core.durable import read_json

from .stage_params import through_running_ui

TABLES = {"table-1": ("table1.json", "Table 1: sample quality at the final evaluation"),
          "table-2": ("table2.json", "Table 2: parameters, multiply-adds, samples/s")}
FIGURE = re.compile(r"!\[([^\]]*)\]\(([^)]+\.png)\)")


def table_rows(path: Path) -> list[dict]:
    """{model: {metric: value}} as one row per model."""
    return [{"model": model, **values} for model, values in json.loads(path.read_text()).items()]


def inline_figures(markdown: str, folder: Path) -> str:
    """The report's PNG links as data URIs: the Prefect UI cannot read files on this disk."""
    def embed(match: re.Match) -> str:
        path = folder / match.group(2)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f"![{match.group(1)}](data:image/png;base64,{data})"
    return FIGURE.sub(embed, markdown)


def mlflow_run_link(tracking_uri: str, run_id: str) -> str:
    from mlflow.tracking import MlflowClient
    experiment = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"


def publish_links(params: Params, root: Path) -> list[str]:
    """A link artifact per trained model; only a tracking server has pages to link to, and
    one that is down gets none this time (the flow goes on)."""
    from dice_core.tracking.mlflow_tracker import SEND_ERRORS

    uri = params.tracking.uri
    if not uri or not uri.startswith(("http://", "https://")):
        print("no MLflow links: tracking.uri is not a server (make ui starts one)")
        return []
    runs = {model: (read_json(root / params.train.output / model / "summary.json") or {})
            .get("run_id") for model in params.train.models}
    try:
        links = {model: mlflow_run_link(uri, run_id) for model, run_id in runs.items()
                 if run_id}
    except SEND_ERRORS as error:
        print(f"no MLflow links this time: MLflow at {uri} did not answer "
              f"({type(error).__name__}); the next flow run adds them")
        return []
    for model, link in links.items():
        create_link_artifact(key=f"mlflow-{model}", link=link, link_text=f"{model} in MLflow",
                             description=f"The MLflow run of {model}")
    return [f"mlflow-{model}" for model in links]


def publish(root: Path) -> list[str]:
    """Every artifact the report and the runs allow; returns their keys."""
    params = through_running_ui(load_params(root / "params.yaml"), root)
    report_dir = root / params.report.output
    keys = []
    for key, (name, title) in TABLES.items():
        if (report_dir / name).is_file():
            create_table_artifact(key=key, table=table_rows(report_dir / name), description=title)
            keys.append(key)
    report = report_dir / "report.md"
    if report.is_file():
        create_markdown_artifact(key="report", description="The report (report.md)",
                                 markdown=inline_figures(report.read_text(), report_dir))
        keys.append("report")
    return keys + publish_links(params, root)
