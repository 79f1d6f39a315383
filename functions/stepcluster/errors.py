"""Exceptions of the domain package.

A Lambda handler lets these propagate: Step Functions sees the class name as the error name
(`errorType`), which is what the definition's Retry and Catch clauses match on. So the names
are part of the contract with `statemachine/definition.asl.json`.
"""


class StepclusterError(Exception):
    """Base of every error this package raises on purpose."""


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
    """The scheduler answered something the adapter cannot interpret."""


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


class TransientSSHError(StepclusterError):
    """The head node could not be reached or the connection dropped: worth retrying."""


class HostKeyError(StepclusterError):
    """The head node presented a host key other than the pinned one. Never retried."""


class ClusterError(StepclusterError):
    """The cluster backend failed to create, find, or delete the cluster."""


class SSHAuthenticationError(StepclusterError):
    """The head node refused the key. Retrying will not help."""
