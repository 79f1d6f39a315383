"""The cluster's lifecycle (AWS APIs and the cluster tools; no SSH), for the states "Create
Cluster", "Check Cluster Status", "Delete Cluster" and "Check Deletion" ({"action", "run"}),
for the EventBridge rule that fires when an execution ends ABORTED, TIMED_OUT or FAILED (an
aborted or timed-out execution never reaches its own teardown, so the cleanup deletes what
carries its tag), and for the periodic sweep ({"action": "sweep", "state_machine_arn"}) that
deletes what is still tagged with such an execution (a create that finished after the cleanup,
an EventBridge delivery that never came)."""

from stepcluster.errors import InputError
from stepcluster.runtime import cleanup_task, run_task, service

#: The definition's "action" -> the task it runs.
ACTIONS = {"create": "create_cluster", "status": "cluster_status",
           "delete": "delete_cluster", "deletion_status": "deletion_status"}


def handler(event, context):
    if not isinstance(event, dict):
        raise InputError(f"the cluster function takes an object, not {type(event).__name__}")
    if event.get("detail-type") == "Step Functions Execution Status Change":
        arn = event["detail"]["executionArn"]
        return cleanup_task(arn, lambda: service().cleanup_execution(arn))
    if event.get("action") == "sweep":
        arn = event["state_machine_arn"]
        return cleanup_task(arn, lambda: service().sweep(arn))
    if event.get("action") not in ACTIONS:
        raise InputError(f"unknown action {event.get('action')!r}: one of {', '.join(ACTIONS)} or sweep")
    return run_task(ACTIONS[event["action"]], event.get("run"), context=context)
