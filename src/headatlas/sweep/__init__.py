"""Sweeps: many models, or many checkpoints of one, mapped as tasks (on Ray when installed)
into one store. Orchestration only; every map goes through :func:`headatlas.map_heads`."""

from headatlas.sweep.run import EntryOutcome, SweepReport, run_sweep
from headatlas.sweep.spec import SweepEntry, sweep_entries

__all__ = ["EntryOutcome", "SweepEntry", "SweepReport", "run_sweep", "sweep_entries"]
