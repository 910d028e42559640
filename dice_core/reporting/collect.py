"""What the report is made of, read from the runs and evaluations on disk."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dice_core.config import FIRST_TRAINING_SEED, RunSpec, run_name


@dataclass
class ModelResults:
    """One run: a model trained with one training seed."""
    model: str
    seed: int = FIRST_TRAINING_SEED
    history: list[tuple[int, dict]] = field(default_factory=list)   # (step, metrics)
    final: dict = field(default_factory=dict)                       # the last evaluation
    emissions: dict = field(default_factory=dict)
    static: dict = field(default_factory=dict)                      # filled by the report

    @property
    def run(self) -> str:
        return run_name(self.model, self.seed)

    def final_scales(self) -> list[float]:
        """The guidance scales of the final evaluation, its headline first (evaluations from
        before guidance existed were unguided)."""
        return self.final.get("cfg_scales", [self.final.get("cfg_scale", 1.0)])


def eval_history(run_dir: Path) -> list[tuple[int, dict]]:
    history = []
    for path in sorted((run_dir / "eval").glob("step-*/metrics.json")):
        history.append((int(path.parent.name.split("-")[1]), json.loads(path.read_text())))
    return history


def collect(runs: dict[str, RunSpec], runs_dir: str | Path,
            eval_dir: str | Path) -> list[ModelResults]:
    """Per run of train.runs: its in-training evaluations, its final evaluation (the standalone
    ``dice evaluate`` when there is one, else the last in-training one) and its emissions."""
    results = []
    for name, spec in runs.items():
        run_dir = Path(runs_dir) / name
        history = eval_history(run_dir)
        standalone = Path(eval_dir) / name / "metrics.json"
        final = (json.loads(standalone.read_text()) if standalone.is_file()
                 else history[-1][1] if history else {})
        summary = run_dir / "summary.json"
        emissions = json.loads(summary.read_text()).get("emissions", {}) \
            if summary.is_file() else {}
        results.append(ModelResults(spec.model, spec.seed, history, final, emissions))
    return results
