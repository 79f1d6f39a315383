"""The EventBridge rule's "Step Functions Execution Status Change" (SUCCEEDED, FAILED, ABORTED,
TIMED_OUT) for this state machine: one message about the run to the deployment's SNS topic."""

from stepcluster.errors import InputError
from stepcluster.runtime import notify_task


def handler(event, context):
    if not isinstance(event, dict) or event.get("detail-type") != "Step Functions Execution Status Change":
        raise InputError("the notify function takes EventBridge's Step Functions Execution Status Change "
                         f"event, not {str(event)[:200]}")
    return notify_task(event["detail"]["executionArn"])
