"""A run's carbon emissions, two ways: energy measured by codecarbon (offline, with a country's
grid intensity) and the DICE paper's estimate from GPU-hours and board power."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from codecarbon import OfflineEmissionsTracker
from codecarbon.output import BaseOutput, EmissionsData

from dice_core.durable import read_json, write_json_atomic

EMISSIONS_FILE = "emissions.json"

CODECARBON_KG = "emissions/codecarbon_kg"
CODECARBON_KWH = "emissions/codecarbon_kwh"
PAPER_ESTIMATE_KG = "emissions/paper_estimate_kg"
DEVICE_HOURS = "emissions/device_hours"
WALL_HOURS = "emissions/wall_hours"
METRIC_NAMES = (CODECARBON_KG, CODECARBON_KWH, PAPER_ESTIMATE_KG, DEVICE_HOURS, WALL_HOURS)


def paper_estimate_kg(gpu_hours: float, board_power_watts: float, grid_g_per_kwh: float) -> float:
    """kg of CO2 as the DICE paper estimates it: GPU-hours x board power x grid intensity.

    The paper states only its inputs' product: "approximately 200 GPU hours" on one RTX 3090
    "equates to an equivalent 39.2 kg of CO2", 0.196 kg per GPU-hour. 350 W (the RTX 3090's board
    power) and 560 g CO2 per kWh (params.yaml's emissions section) reproduce it exactly:
    200 h x 0.35 kW x 0.56 kg/kWh = 39.2 kg.
    """
    return gpu_hours * (board_power_watts / 1000.0) * (grid_g_per_kwh / 1000.0)


def total_emissions(runs: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The pipeline's total: each metric summed over the runs' totals (as ``stop`` returns them)."""
    total: dict[str, float] = {}
    for run in runs:
        for name, value in run.items():
            total[name] = total.get(name, 0.0) + float(value)
    return total


class _LatestTotals(BaseOutput):
    """Keeps the cumulative figures codecarbon hands its outputs at each flush and at stop."""

    def __init__(self):
        self.data: EmissionsData | None = None

    def out(self, total: EmissionsData, delta: EmissionsData) -> None:
        self.data = total


class EmissionsMeter:
    """Emissions of one run, cumulative over every session that runs on the same ``state_dir``.

    ``start`` and ``stop`` bracket a session; ``checkpoint`` (call it when the training saves
    its own checkpoint) brings ``state_dir/emissions.json`` up to date, so a killed run loses at
    most what it spent since. Figures, as MLflow metrics (``stop`` and ``checkpoint`` return them):

    - ``emissions/codecarbon_kwh``, ``emissions/codecarbon_kg``: energy of this process's share of
      CPU, RAM and GPU as codecarbon measures it (offline: no network, the intensity of
      ``country_iso_code``'s grid), as of its last measurement.
    - ``emissions/wall_hours``: the meter's wall-clock time.
    - ``emissions/device_hours``: wall hours x ``gpus``, the GPUs this run holds; the paper's
      "GPU hours".
    - ``emissions/paper_estimate_kg``: ``paper_estimate_kg`` of those device-hours. A CPU-only
      run (``gpus=0``) has no device-hours and so an estimate of 0: the paper's method counts
      GPUs only, and codecarbon's figures are then the whole story.
    """

    def __init__(self, state_dir: str | os.PathLike, country_iso_code: str, *, gpus: int,
                 board_power_watts: float, grid_g_per_kwh: float,
                 measure_power_secs: float = 15.0):
        if gpus < 0:
            raise ValueError(f"gpus must be 0 or more, not {gpus}")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / EMISSIONS_FILE
        self.country_iso_code = country_iso_code
        self.gpus = gpus
        self.board_power_watts = board_power_watts
        self.grid_g_per_kwh = grid_g_per_kwh
        self.measure_power_secs = measure_power_secs
        saved = read_json(self.path)
        self._earlier = {name: float(saved["totals"].get(name, 0.0)) if saved else 0.0
                         for name in METRIC_NAMES}
        self._tracker: OfflineEmissionsTracker | None = None
        self._latest = _LatestTotals()
        self._started_at: float | None = None

    def start(self) -> None:
        if self._tracker is not None:
            raise RuntimeError("this EmissionsMeter is already running: stop it first")
        # codecarbon logs at INFO from its constructor before it applies log_level.
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self._latest = _LatestTotals()
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=self.country_iso_code, output_dir=str(self.state_dir),
            save_to_file=False, output_handlers=[self._latest], log_level="error",
            tracking_mode="process", measure_power_secs=self.measure_power_secs,
            allow_multiple_runs=True)
        self._tracker.start()
        self._started_at = time.monotonic()

    def checkpoint(self) -> dict[str, float]:
        """Measure now and write the totals so far to emissions.json; the session goes on."""
        if self._tracker is not None:
            self._tracker.flush()
        totals = self.totals()
        self._save(totals)
        return totals

    def stop(self) -> dict[str, float]:
        """End the session; returns the totals over every session, also in emissions.json."""
        if self._tracker is not None:
            self._tracker.stop()
        totals = self.totals()
        self._earlier = totals
        self._tracker = None
        self._started_at = None
        self._save(totals)
        return totals

    def totals(self) -> dict[str, float]:
        session = self._session()
        return {name: self._earlier[name] + session[name] for name in METRIC_NAMES}

    def _session(self) -> dict[str, float]:
        if self._started_at is None:
            return dict.fromkeys(METRIC_NAMES, 0.0)
        wall_hours = (time.monotonic() - self._started_at) / 3600.0
        device_hours = wall_hours * self.gpus
        data = self._latest.data
        return {
            CODECARBON_KG: float(data.emissions or 0.0) if data else 0.0,
            CODECARBON_KWH: float(data.energy_consumed or 0.0) if data else 0.0,
            PAPER_ESTIMATE_KG: paper_estimate_kg(device_hours, self.board_power_watts,
                                                 self.grid_g_per_kwh),
            DEVICE_HOURS: device_hours,
            WALL_HOURS: wall_hours,
        }

    def _save(self, totals: dict[str, float]) -> None:
        write_json_atomic(self.path, {
            "totals": totals,
            "country_iso_code": self.country_iso_code,
            "gpus": self.gpus,
            "board_power_watts": self.board_power_watts,
            "grid_g_per_kwh": self.grid_g_per_kwh,
        })
