"""`stepcluster cleanup`: the abort cleanup, asked for by hand.

In AWS an EventBridge rule invokes the cluster function when an execution ends ABORTED,
TIMED_OUT or FAILED; run-local has no EventBridge, and a rule's delivery can be missed (or a
run-local killed by a second Ctrl-C). This module builds that rule's event and invokes the
cluster function with it, synchronously, the way Lambda is invoked anywhere: the deployed
stack's function (found by its logical id), or the local one (LocalLambdaEndpoint, through
AWS_ENDPOINT_URL_LAMBDA). It never cleans up itself: the function's own cleanup
(RunService.cleanup_execution) does, so there is one cleanup, whoever asks for it.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass

from stepcluster.errors import InputError, StepclusterError

#: The cluster function's logical ids in template.yaml: ClusterFunction, or
#: ParallelClusterFunction when the stack's ClusterBackend is parallelcluster (one of the two
#: exists, by the template's Conditions).
CLUSTER_FUNCTIONS = ("ClusterFunction", "ParallelClusterFunction")

#: arn:PARTITION:states:REGION:ACCOUNT:execution:STATE_MACHINE:NAME. The name is what the run
#: folder on the head node is called (RemoteWorkRoot/NAME), so it is held to characters that
#: cannot leave that folder: no "/", and not "." or ".." (Step Functions allows dots).
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}"
EXECUTION_ARN = re.compile(rf"^arn:(aws[a-z-]*):states:([a-z0-9-]+):(\d{{12}}):execution:"
                           rf"([A-Za-z0-9._-]{{1,80}}):({_NAME})$")
EXECUTION_NAME = re.compile(rf"^{_NAME}$")


class CleanupFailed(StepclusterError):
    """The cluster function ran and raised (a FunctionError): `message` is its errorMessage."""

    def __init__(self, function: str, error_type: str | None, message: str):
        self.function, self.error_type, self.message = function, error_type, message
        super().__init__(f"{function} failed: {error_type or 'error'}: {message}")


@dataclass(frozen=True)
class Execution:
    """An execution ARN, in parts."""

    arn: str
    partition: str
    region: str
    account: str
    state_machine: str
    name: str

    @property
    def state_machine_arn(self) -> str:
        return f"arn:{self.partition}:states:{self.region}:{self.account}:stateMachine:{self.state_machine}"


def parse_execution_arn(text: str) -> Execution:
    """An InputError saying what an execution ARN looks like, for anything else."""
    match = EXECUTION_ARN.match(text or "")
    if not match:
        raise InputError(f"{text!r} is not an execution ARN (arn:aws:states:REGION:ACCOUNT:execution:"
                         "STATE_MACHINE:NAME, NAME of letters, digits, '.', '_' and '-')")
    return Execution(text, *match.groups())


def cleanup_event(execution_arn: str, *, status: str = "ABORTED", input: str | None = None,
                  start_ms: int | None = None, stop_ms: int | None = None) -> dict:
    """The EventBridge "Step Functions Execution Status Change" event the template's rule
    (ClusterFunction, Events: ExecutionEnded) delivers for `execution_arn`: the shape of
    events/cluster_cleanup.json, built here because the CLI may be installed without the
    repository's events/ folder (tests/unit/test_cleanup_client.py holds the two equal)."""
    execution = parse_execution_arn(execution_arn)
    now = int(time.time() * 1000)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Step Functions Execution Status Change",
        "source": "aws.states",
        "account": execution.account,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((stop_ms or now) / 1000)),
        "region": execution.region,
        "resources": [execution.arn],
        "detail": {
            "executionArn": execution.arn,
            "stateMachineArn": execution.state_machine_arn,
            "name": execution.name,
            "status": status,
            "startDate": start_ms if start_ms is not None else now,
            "stopDate": stop_ms if stop_ms is not None else now,
            "input": input,
            "output": None,
        },
    }


def invoke_cleanup(lambda_client, function: str, event: dict) -> dict:
    """Invoke `function` with `event` and wait for it (RequestResponse); its result, or
    CleanupFailed with the function's own errorMessage (what it logged the chain of)."""
    response = lambda_client.invoke(FunctionName=function, InvocationType="RequestResponse",
                                    Payload=json.dumps(event).encode())
    payload = response["Payload"].read()
    try:
        body = json.loads(payload or b"null")
    except ValueError:
        body = payload.decode(errors="replace")
    if response.get("FunctionError"):
        if isinstance(body, dict):
            raise CleanupFailed(function, body.get("errorType"), str(body.get("errorMessage")))
        raise CleanupFailed(function, None, str(body))
    return body


def cluster_function(cfn_client, stack: str) -> str:
    """The physical name of the stack's cluster function. InputError when the stack does not
    exist or has neither logical id (not a stepcluster stack)."""
    from botocore.exceptions import ClientError

    for logical_id in CLUSTER_FUNCTIONS:
        try:
            resource = cfn_client.describe_stack_resource(StackName=stack, LogicalResourceId=logical_id)
        except ClientError as exc:
            message = exc.response.get("Error", {}).get("Message", str(exc))
            if "does not exist" in message and "Resource" not in message:
                raise InputError(f"stack {stack!r} not found: {message}") from None
            continue          # this logical id is not in the stack (the other backend's)
        physical = resource["StackResourceDetail"].get("PhysicalResourceId")
        if physical:
            return physical
    raise InputError(f"stack {stack!r} has no cluster function ({' or '.join(CLUSTER_FUNCTIONS)}): "
                     "is it a stepcluster stack?")


def execution_details(sfn_client, execution: Execution) -> dict:
    """What EventBridge would put in the event, from DescribeExecution. InputError for an
    execution Step Functions does not know, or one still RUNNING (cleaning up under a running
    execution would pull its jobs and folder from under it: stop it first)."""
    from botocore.exceptions import ClientError

    try:
        described = sfn_client.describe_execution(executionArn=execution.arn)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ExecutionDoesNotExist":
            raise InputError(f"no such execution: {execution.arn}") from None
        raise
    if described["status"] == "RUNNING":
        raise InputError(f"execution {execution.name} is still RUNNING: stop it first "
                         f"(aws stepfunctions stop-execution --execution-arn {execution.arn}); "
                         "its cleanup then runs by itself")
    millis = {key: int(described[key].timestamp() * 1000) for key in ("startDate", "stopDate")
              if described.get(key)}
    return {"status": described["status"], "input": described.get("input"),
            "start_ms": millis.get("startDate"), "stop_ms": millis.get("stopDate")}


def artifacts_bucket(cfn_client, stack: str) -> str | None:
    """The stack's ArtifactsBucketName output, to say where the kept results are (None if the
    output cannot be read: the cleanup does not depend on it)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        stacks = cfn_client.describe_stacks(StackName=stack)["Stacks"]
    except (ClientError, BotoCoreError):
        return None
    return next((o["OutputValue"] for s in stacks for o in s.get("Outputs") or []
                 if o["OutputKey"] == "ArtifactsBucketName"), None)


def cleanup_deployed(execution_arn: str, stack: str, *, region: str | None = None, session=None) -> dict:
    """Play the EventBridge rule's event for `execution_arn` to `stack`'s cluster function.

    Returns {"function", "result", "artifacts_bucket"}; raises InputError for a bad ARN, a
    stack or function that is not there, or an execution still running; CleanupFailed when the
    function raised."""
    import boto3

    execution = parse_execution_arn(execution_arn)
    session = session or boto3.session.Session()
    region = region or execution.region
    cfn = session.client("cloudformation", region_name=region)
    function = cluster_function(cfn, stack)
    details = execution_details(session.client("stepfunctions", region_name=region), execution)
    event = cleanup_event(execution.arn, **details)
    result = invoke_cleanup(session.client("lambda", region_name=region), function, event)
    return {"function": function, "result": result, "artifacts_bucket": artifacts_bucket(cfn, stack)}


def describe_released(result: dict, execution: str) -> list[str]:
    """What the cleanup did on the head node(s), from its result's "released": one
    {"run_dir", "removed", "note"} for an existing head node, a list of them (or of
    {"cluster", "error"}) for created clusters."""
    value = result.get("released")
    found = [item for item in (value if isinstance(value, list) else [value]) if isinstance(item, dict)]
    lines = []
    for item in found:
        if item.get("error"):
            lines.append(f"could not release the head node of {item.get('cluster')}: {item['error']}")
        elif item.get("run_dir") and item.get("removed"):
            lines.append(f"removed {item['run_dir']} on the head node")
        elif item.get("run_dir"):
            lines.append(f"found {item['run_dir']} on the head node but did not remove it")
        if item.get("note"):
            lines.append(f"note: {item['note']}")
    if "released" in result and not any(item.get("run_dir") or item.get("error") for item in found):
        lines.append(f"nothing of {execution} on the head node (its folder was not made yet, or is gone)")
    return lines


def removed_a_folder(result: dict) -> bool:
    """Whether the cleanup found (and so kept the results of) a run folder."""
    value = result.get("released")
    return any(isinstance(item, dict) and item.get("run_dir")
               for item in (value if isinstance(value, list) else [value]))


def describe_result(result: dict, *, execution: str, bucket: str | None) -> list[str]:
    """The cluster function's cleanup result, as lines for a person."""
    lines = describe_released(result, execution)
    for cluster in result.get("clusters") or []:
        lines.append(f"deleted cluster {cluster.get('name') if isinstance(cluster, dict) else cluster}")
    if not lines:
        lines.append(f"nothing tagged with {execution} was left")
    if bucket and removed_a_folder(result):
        lines.append(f"results: s3://{bucket}/{execution}/ (manifest.json, <job>/stdout, stderr, output/)")
    return lines
