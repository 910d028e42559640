"""Renders DeepSpeed configurations for launchers outside this pipeline (``deepspeed
--deepspeed_config``, a cluster's own scheduler) from the one generator that training uses,
``dice_core.training.engine.deepspeed_config``: these JSON files are outputs, never edited.

    python infra/render_deepspeed.py            # writes infra/deepspeed/*.json
    python infra/render_deepspeed.py --check    # fails when a file differs from the generator
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dice_core.training.engine import deepspeed_config
from dice_core.training.layout import batch_layout

FOLDER = Path(__file__).resolve().parent / "deepspeed"
# name: (global batch, micro-batch, workers, precision) of the settings a launcher would use
EXAMPLES = {"paper-1x3090-fp16": (128, 128, 1, "fp16"),
            "paper-8gpu-fp16": (128, 16, 8, "fp16"),
            "embedded-cpu-fp32": (64, 64, 1, "fp32")}


def rendered() -> dict[str, str]:
    texts = {}
    for name, (global_batch, micro_batch, workers, precision) in EXAMPLES.items():
        config = deepspeed_config(batch_layout(global_batch, micro_batch, workers), precision,
                                  zero_stage=0, initial_loss_scale_power=16)
        texts[name] = json.dumps(config, indent=2) + "\n"
    return texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for name, text in rendered().items():
        path = FOLDER / f"{name}.json"
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            FOLDER.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python infra/render_deepspeed.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
