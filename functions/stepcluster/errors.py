"""Exceptions of the domain package.

A Lambda handler lets these propagate: Step Functions sees the class name as the error name
(`errorType`), which is what the definition's Retry and Catch clauses match on. So the names
are part of the contract with `statemachine/definition.asl.json`.
"""

from __future__ import annotations

from dataclasses import dataclass


class StepclusterError(Exception):
    """Base of every error this package raises on purpose.

    Each carries, as attributes, the data it is about (the problems of a config, the command
    output a scheduler printed, the result of a remote command), so a caller can act on it
    without parsing the message; the message says it all for a person.
    """


class ConfigError(StepclusterError):
    """The jobs config (or another user-written input) is invalid.

    `problems` holds every problem found, not only the first.
    """

    def __init__(self, problems):
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class InputError(StepclusterError):
    """The execution input is invalid (e.g. a missing or malformed cluster_name)."""


class PlanError(StepclusterError):
    """The deployed jobs plan is missing, unreadable, or does not match the state machine."""


class SchedulerError(StepclusterError):
    """The scheduler refused, did not answer, or answered something the adapter cannot read.

    `scheduler` names it ("slurm", "sge", "torque") where known; `output` is what it printed
    (a `schedulers.CommandOutput`: stdout, stderr, exit code) when a command's answer is what
    went wrong; `job_ids` the jobs it is about.
    """

    def __init__(self, message: str, *, scheduler: str | None = None, output=None, job_ids=()):
        self.scheduler = scheduler
        self.output = output
        self.job_ids = tuple(job_ids)
        super().__init__(message)


class SchedulerUnavailable(SchedulerError):
    """The scheduler did not answer (its controller down or restarting): the definition retries
    the task with back-off for several minutes instead of failing the run."""


class RequestRefused(StepclusterError):
    """A job's request its scheduler cannot take: a resource it cannot express, or an option
    (in the handler's directives or in scheduler_options) that would break how the job is
    tracked. `problems` says each, with where it was written."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class StagingError(StepclusterError):
    """A job's files could not be staged on the head node (missing handler, S3 error...)."""


class RemoteCommandError(StepclusterError):
    """A command on the head node exited non-zero where success was required."""

    def __init__(self, result):
        self.result = result
        super().__init__(
            f"remote command failed (exit {result.exit_code}): {result.command}\n"
            f"{result.tail()}"
        )


class HeadNodeError(StepclusterError):
    """A script on the head node ended well but printed what the run cannot read (no run
    folder, a cut record). `result` is its CommandResult."""

    def __init__(self, message: str, *, result=None):
        self.result = result
        super().__init__(message if result is None else f"{message}\n{result.tail()}")


class InternalError(StepclusterError):
    """A Python error no code here expected (a bug): named with its type, its traceback and
    chain in the function's log. `error` is the original exception."""

    def __init__(self, message: str, *, error: BaseException):
        self.error = error
        super().__init__(message)


class TransientSSHError(StepclusterError):
    """The head node could not be reached or the connection dropped: worth retrying."""


class HostKeyError(StepclusterError):
    """The head node presented a host key other than the pinned one. Never retried."""


class ClusterError(StepclusterError):
    """The cluster backend failed to create, find, or delete the cluster."""


class SSHAuthenticationError(StepclusterError):
    """The head node refused the key. Retrying will not help."""


# --------------------------------------------------------------------------------------------
# The problems a ConfigError holds


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) in a config file, with where it is."""

    path: str
    line: int | None
    section: str | None
    key: str | None
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        location = self.path if self.line is None else f"{self.path}:{self.line}"
        parts = [f"{location}:"]
        if self.severity in ("warning", "note"):
            parts.append(f"{self.severity}:")
        if self.section is not None:
            parts.append(f"[{self.section}]")
        if self.key is not None:
            parts.append(f"{self.key}:")
        parts.append(self.message)
        # Every field may hold what the user wrote (a path, a section, a key): escaped, so that no
        # control, bidi or separator character reaches the terminal raw.
        return escape_unsafe(" ".join(parts))


def escape_unsafe(text: str) -> str:
    """`text` with every character that is not printable (save the space) written as
    \\xNN, \\uNNNN or \\UNNNNNNNN, so that nothing printed can drive a terminal."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == " " or ch.isprintable():
            out.append(ch)
            continue
        code = ord(ch)
        if code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)
