"""The Prefect flow: every stage of dvc.yaml as one task, run through DVC, in the graph's order.

Each task runs ``dvc repro --single-item <stage>`` in a subprocess, so the flow and ``dvc repro``
share one cache, one lock file and one lineage, and a crash in training cannot take the flow
down; a re-run resumes the training runs from their checkpoints. A stage that ``dvc status``
finds up to date, with everything it depends on, is reported so without starting DVC again.
After the stages it delivers MLflow records journalled while the server was down, and publishes
the report, Tables 1-2 and a link to each model's MLflow run as Prefect artifacts (stable keys,
so the Artifacts page keeps their history).

    dice flow [--model dit-t ...] [--profile imagenet] [-S train.steps=100 ...]
    dice flow serve [--cron "0 2 * * *"]
    python -m pipelines.flow ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

# absolute imports: Prefect loads this file by its path to run a deployment's flow runs
from pipelines import artifacts, dvc_stages
from pipelines.settings import settled_params, update_params
from pipelines.tracking_delivery import deliver_pending

DEFAULT_CRON = "0 2 * * *"      # every night at 02:00
DEPLOYMENT = "dice-nightly"
# Stages whose re-run continues where a crashed one stopped (checkpoints, shard journals).
RESUMING = ("train@", "prepare", "encode")


@task(task_run_name="{stage}")
def run_stage(stage: str, project: str) -> dict:
    return dvc_stages.reproduce(stage, Path(project), get_run_logger())


def retry_helps(task, task_run, state) -> bool:
    """Prefect's retry condition: a crash (killed, out of memory, a lost worker) is retried, a
    stage that stopped with an error the user must fix is not."""
    return not isinstance(state.data, dvc_stages.StageRefused)


def stage_task(stage: str):
    """``run_stage``, retried once after a crash where the re-run resumes."""
    return run_stage.with_options(retries=1 if stage.startswith(RESUMING) else 0,
                                  retry_condition_fn=retry_helps)


@task(task_run_name="{stage}")
def up_to_date(stage: str) -> dict:
    get_run_logger().info("%s | up to date (dvc status), and so is everything it depends on",
                          stage)
    return {"stage": stage, "ran": False, "seconds": 0.0}


@task(task_run_name="deliver-mlflow-records")
def deliver(project: str) -> int:
    return deliver_pending(Path(project), get_run_logger())


@task(task_run_name="publish-artifacts")
def publish(project: str) -> list[str]:
    return artifacts.publish(Path(project))


@flow(name="dice-pipeline", log_prints=True)
def dice_pipeline(models: list[str] | None = None, profile: str | None = None,
                  overrides: list[str] | None = None, project: str = ".") -> dict:
    """Every stage of the project's dvc.yaml; ``models`` (train.models), ``profile`` and
    ``overrides`` (``train.steps=100``) are written into params.yaml first, as ``dvc exp run
    -S`` does."""
    root = Path(project).resolve()
    layers = settings_layers(models, overrides)
    if update_params(root / "params.yaml", profile, layers):
        print(f"params.yaml updated: profile {profile or '-'}, overrides {layers or '-'}")
    results = []
    for stage, must_run in dvc_stages.stage_plan(root):
        if not must_run:
            results.append(up_to_date(stage))
            continue
        results.append(stage_task(stage)(stage, str(root)))
    delivered = deliver(str(root))
    keys = publish(str(root))
    ran = [r["stage"] for r in results if r["ran"]]
    print(f"ran {', '.join(ran)}" if ran else
          "every stage was up to date (DVC): nothing was trained or evaluated")
    return {"stages": results, "ran": ran, "delivered_records": delivered, "artifacts": keys}


def settings_layers(models: list[str] | None, overrides: list[str] | None) -> list[str]:
    return list(overrides or []) + ([f"train.models={list(models)}"] if models else [])


def serve(cron: str, models: list[str] | None, profile: str | None,
          overrides: list[str] | None) -> None:
    """The scheduled deployment, served from this process until Ctrl-C."""
    from pipelines.prefect_api import require_server
    require_server()
    dice_pipeline.serve(name=DEPLOYMENT, cron=cron,
                        parameters={"models": models, "profile": profile,
                                    "overrides": overrides or [], "project": str(Path.cwd())})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["run", "serve"], default="run",
                        help="run the flow once (default) or serve its scheduled deployment")
    parser.add_argument("--model", action="append", dest="models",
                        help="a preset to train (repeatable); default: train.models")
    parser.add_argument("--profile", help="a profile of profiles/ (imagenet) or a .yaml file")
    parser.add_argument("-S", "--set", action="append", dest="overrides", metavar="KEY=VALUE",
                        help="a params.yaml override, e.g. -S train.steps=100 (repeatable)")
    parser.add_argument("--cron", default=DEFAULT_CRON,
                        help=f"serve: the schedule (default {DEFAULT_CRON!r})")


def run(args: argparse.Namespace) -> dict | None:
    # refused here, before Prefect starts anything, and again inside the flow for runs that
    # the UI or the schedule start
    settled_params("params.yaml", args.profile, settings_layers(args.models, args.overrides))
    if args.action == "serve":
        return serve(args.cron, args.models, args.profile, args.overrides)
    summary = dice_pipeline(models=args.models, profile=args.profile, overrides=args.overrides)
    print(json.dumps(summary))      # the last line: what ran, for scripts
    return summary


if __name__ == "__main__":
    from pipelines.cli import run_as_module  # only as a script: `dice` imports this module
    sys.exit(run_as_module("flow"))
