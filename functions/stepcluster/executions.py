"""Where an execution stands, from Step Functions itself (DescribeExecution).

Two callers: the create task, which checks right after starting the cluster that its own
execution is still RUNNING (an abort while the cluster tool was creating the stack must not
leave the stack behind), and the periodic sweep, which deletes what carries the tag of an
execution of this state machine that ended ABORTED, TIMED_OUT or FAILED.

The boto3 client is injected (tests give a moto one) or made on first use, with short
timeouts: a function in a VPC that cannot reach the Step Functions endpoint must fail the
look-up in seconds, not spend the create function's Timeout on it (DescribeExecution answers
in well under a second).
"""

from __future__ import annotations


from stepcluster import logs
from stepcluster.errors import InputError

log = logs.logger(__name__)

#: What the cleanup rule and the sweep delete for. SUCCEEDED is not among them: a successful
#: run deleted its cluster itself, or kept it (keep_cluster) with its key, on purpose.
ENDED = frozenset({"ABORTED", "TIMED_OUT", "FAILED"})


def execution_prefix(state_machine_arn: str) -> str:
    """`arn:...:stateMachine:NAME` -> `arn:...:execution:NAME:`, what this machine's executions'
    ARNs (and so their `stepcluster:execution` tags) start with."""
    head, sep, name = state_machine_arn.rpartition(":stateMachine:")
    if not sep or not name or ":" in name:
        raise InputError(f"not a state machine ARN: {state_machine_arn!r}")
    return f"{head}:execution:{name}:"


class Executions:
    """Step Functions DescribeExecution behind one method."""

    def __init__(self, client=None, *, region: str | None = None):
        self._client = client
        self.region = region

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "stepfunctions", region_name=self.region,
                config=Config(connect_timeout=3, read_timeout=5,          # 16 s at worst
                              retries={"max_attempts": 2, "mode": "standard"}))
        return self._client

    def status(self, execution_arn: str) -> str | None:
        """RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED or PENDING_REDRIVE; None when Step
        Functions has no such execution (it forgets closed ones after 90 days). Other errors
        (access denied, throttling, no route to the endpoint) propagate."""
        from botocore.exceptions import ClientError

        try:
            return self.client.describe_execution(executionArn=execution_arn)["status"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ExecutionDoesNotExist":
                return None
            raise
