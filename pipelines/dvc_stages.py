"""The stages of dvc.yaml in dependency order, and one stage reproduced through the DVC CLI."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dice_core.durable import read_json
from dice_core.errors import DiceError
from pipelines.stage_outcome import OUTCOME_VARIABLE

# DVC's words for a lock it could not take: its process lock, and its read/write lock of paths
LOCK_HELD = ("Unable to acquire lock", "is being blocked by")


class StageFailed(DiceError, RuntimeError):
    """A stage that crashed (killed, out of memory, a lost worker): a retry may get through."""


class StageRefused(StageFailed):
    """A stage that stopped with an error the user must fix: a retry would fail the same way."""


def stage_plan(root: Path) -> list[tuple[str, bool]]:
    """Every stage (matrix items expanded, ``train@dice-t``), each after what it depends on
    (among stages free to go, the order of dvc.yaml), with whether it must run: ``dvc status``
    lists it, or it depends on a stage that must run (whose new outputs would change it). The
    others are up to date, and starting DVC once per stage to hear so costs seconds each."""
    import networkx as nx
    from dvc.repo import Repo
    with Repo(str(root)) as repo:
        graph = repo.index.graph.reverse()        # edges from a stage to its dependents
        position = {stage: i for i, stage in enumerate(repo.index.stages)}
        ordered = list(nx.lexicographical_topological_sort(graph, key=lambda s: position[s]))
        changed = set(repo.status())
    stale: set = set()
    for stage in ordered:
        if stage.addressing in changed or any(up in stale for up in graph.predecessors(stage)):
            stale.add(stage)
    return [(stage.addressing, stage in stale) for stage in ordered]


def lock_entry(root: Path, stage: str) -> dict | None:
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage)


def dvc_environment() -> dict:
    """This interpreter's folder first on PATH: the stages' ``python -m ...`` are this
    environment's."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def reproduce(stage: str, root: Path, logger: logging.Logger | logging.LoggerAdapter) -> dict:
    """``dvc repro --single-item stage``; ``ran`` is False when DVC found it up to date."""
    before = lock_entry(root, stage)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dice-stage-") as folder:
        outcome = Path(folder) / "outcome.json"       # what the stage says of its failure
        process = subprocess.Popen([str(Path(sys.executable).with_name("dvc")), "repro",
                                    "--single-item", stage], cwd=root,
                                   env={**dvc_environment(), OUTCOME_VARIABLE: str(outcome)},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        for line in process.stdout:
            line = line.rstrip()
            if line and "\r" not in line:          # progress bars stay in the subprocess
                logger.info("%s | %s", stage, line)
            tail = (tail + [line])[-40:]
        if process.wait() != 0:
            raise stage_failure(stage, root, "\n".join(tail), read_json(outcome))
    ran = lock_entry(root, stage) != before
    return {"stage": stage, "ran": ran, "seconds": round(time.perf_counter() - started, 1)}


def stage_failure(stage: str, root: Path, output: str, outcome: dict | None) -> StageFailed:
    """StageRefused when the stage stopped with an error the user must fix (its exit status 2)
    or DVC's lock is held; StageFailed, which the flow retries, for anything else."""
    if outcome and outcome.get("exit_status") == 2:
        return StageRefused(f"{stage}: {outcome['message']}\n(not retried: it fails the same "
                            "way until this is fixed; then run the flow again)")
    if any(words in output for words in LOCK_HELD):
        return StageRefused(
            f"{stage}: DVC's lock is held. If no other `dvc repro` or `dice flow` runs in "
            f"{root}, a killed run left it: remove {root / '.dvc' / 'tmp' / 'lock'} and "
            f"{root / '.dvc' / 'tmp' / 'rwlock'}, then run the flow again (finished stages "
            "are kept, training resumes from its checkpoints).\n" + output)
    return StageFailed(f"{stage} failed (`dvc repro --single-item {stage}` in {root}):\n{output}")
