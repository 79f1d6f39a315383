"""Scheduler adapters: argv builders, output parsers and state tables; no I/O."""

from stepcluster.schedulers.base import (  # noqa: F401
    ACTIVE, TERMINAL, Category, CommandOutput, JobStatus, Scheduler,
)


def get_scheduler(name: str) -> Scheduler:
    """The adapter for a scheduler name as written in configs ("slurm", "sge", "torque")."""
    from stepcluster.schedulers.sge import SGE
    from stepcluster.schedulers.slurm import Slurm
    from stepcluster.schedulers.torque import Torque

    adapters = {"slurm": Slurm, "sge": SGE, "torque": Torque}
    try:
        return adapters[name]()
    except KeyError:
        raise ValueError(
            f"unknown scheduler {name!r}: expected one of {', '.join(sorted(adapters))}"
        ) from None
