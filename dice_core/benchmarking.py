"""What every script under bench/ shares: the device's name and the record it writes."""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def write_record(results_dir: Path, name: str, title: str, device: torch.device,
                 rows: list[dict], table: str) -> Path:
    """Writes ``<name>-{cpu,gpu}.json`` (the rows) and ``.md`` (the printed table)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    slug = "gpu" if device.type == "cuda" else "cpu"
    record = {"benchmark": title, "device": device_name(device), "torch": torch.__version__,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    json_path = results_dir / f"{name}-{slug}.json"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    (results_dir / f"{name}-{slug}.md").write_text(
        f"# {title}\n\nDevice: {record['device']}, torch {record['torch']}, "
        f"{record['date']}\n\n```\n{table}\n```\n")
    return json_path
