"""Scheduler adapters: argv builders, output parsers and state tables; no I/O."""

from stepcluster.errors import SchedulerError
from stepcluster.schedulers.base import (
    ACTIVE, TERMINAL, Category, CommandOutput, JobStatus, Scheduler,
)

__all__ = ["ACTIVE", "TERMINAL", "Category", "CommandOutput", "JobStatus", "Scheduler", "get_scheduler"]


def get_scheduler(name: str) -> Scheduler:
    """The adapter for a scheduler name as written in configs ("slurm", "sge", "torque");
    SchedulerError for any other name."""
    from stepcluster.schedulers.sge import SGE
    from stepcluster.schedulers.slurm import Slurm
    from stepcluster.schedulers.torque import Torque

    adapters = {"slurm": Slurm, "sge": SGE, "torque": Torque}
    try:
        return adapters[name]()
    except KeyError:
        raise SchedulerError(
            f"unknown scheduler {name!r}: expected one of {', '.join(sorted(adapters))}",
            scheduler=name,
        ) from None
