"""What one job asks its scheduler for, put together from the handler's directives and the
config's resource keys, and checked before anything is submitted.

Used twice: at submission, on the handler as staged on the head node (an s3_uri job's files
exist only there, and only then), and by `validate --scheduler` / `preprocess`, on the local
files of local_path jobs, so that a refusal is seen before a cluster is paid for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from stepcluster import directives
from stepcluster.config import JobsConfig
from stepcluster.errors import Problem, RequestRefused
from stepcluster.resources import Resources
from stepcluster.schedulers import Scheduler


@dataclass(frozen=True)
class JobRequest:
    """The handler's directive lines (carried into the wrapper's header) and the submit options
    of the config's resource keys (on the command line, where they win over the directives)."""

    directives: tuple[str, ...]
    argv: tuple[str, ...]
    #: options of the handler that stepcluster replaces (said, never fatal)
    overridden: tuple[str, ...] = ()


def request_for(scheduler: Scheduler, resources: Resources, found: Sequence[directives.Directive],
                handler: str) -> JobRequest:
    """The job's request; RequestRefused naming every problem (the handler's lines and the
    config's keys) when the scheduler must not be given it."""
    findings = scheduler.review_directives(found)
    problems = [f.describe(f"handler {handler}") for f in findings if f.refused]
    problems += scheduler.request_problems(resources)
    if problems:
        raise RequestRefused(problems)
    return JobRequest(tuple(d.text for d in found), tuple(scheduler.request_argv(resources)),
                      tuple(f.describe(f"handler {handler}") for f in findings if not f.refused))


def check_config(config: JobsConfig, scheduler: Scheduler) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) for `config` on `scheduler`: each job's resource keys, and the
    directives of each local_path handler (an s3_uri handler is checked when it is staged)."""
    errors, warnings = [], []
    for job in config.jobs:
        section = f"job {job.name}"
        for message in scheduler.request_problems(job.resources):
            key = _key_of(message, job.lines)
            errors.append(Problem(config.path, job.lines.get(key, job.lines.get("")), section, key or None,
                                  f"{scheduler.name}: {message.removeprefix(key + ' ').removeprefix(key)}"
                                  if key == "scheduler_options" else f"{scheduler.name}: {message}"))
        handler = _local_handler(job.local_path, job.handler)
        if handler is None:
            continue
        with handler.open("rb") as file:
            data = file.read(directives.MAX_SCRIPT_BYTES)
        if not directives.is_script(data):
            continue
        found = directives.read_directives(data.decode(errors="replace"), scheduler.DIRECTIVES)
        for finding in scheduler.review_directives(found):
            problem = Problem(str(handler), finding.line, section, None, finding.message(),
                              "error" if finding.refused else "warning")
            (errors if finding.refused else warnings).append(problem)
    return errors, warnings


def _key_of(message: str, lines: dict) -> str:
    """The config key a request problem is about: scheduler_options when it names one of its
    options, else the first resource key the job sets ("" when none: the section's header)."""
    if message.startswith("scheduler_options"):
        return "scheduler_options"
    return next((key for key in _RESOURCE_KEYS if key in lines), "")


_RESOURCE_KEYS = ("nodes", "tasks", "cpus_per_task", "memory", "time_limit", "queue")


def _local_handler(local_path: str | None, handler: str) -> Path | None:
    """The handler's file of a local_path job (a folder holding it, or the file itself)."""
    if not local_path:
        return None
    path = Path(local_path)
    target = path / handler if path.is_dir() else path
    return target if target.is_file() else None
