"""The cluster's lifecycle (AWS APIs and the cluster tools; no SSH), for the states "Create
Cluster", "Check Cluster Status", "Delete Cluster" and "Check Deletion" ({"action", "run"}),
for the EventBridge rule that fires when an execution ends ABORTED, TIMED_OUT or FAILED (an
aborted or timed-out execution never reaches its own teardown, so the cleanup deletes what
carries its tag), and for the periodic sweep ({"action": "sweep", "state_machine_arn"}) that
deletes what is still tagged with such an execution (a create that finished after the cleanup,
an EventBridge delivery that never came)."""

from stepcluster.runtime import service

ACTIONS = {
    "create": lambda s, run: s.create_cluster(run),
    "status": lambda s, run: s.cluster_status(run),
    "delete": lambda s, run: s.delete_cluster(run),
    "deletion_status": lambda s, run: s.deletion_status(run),
}


def handler(event, context):
    if event.get("detail-type") == "Step Functions Execution Status Change":
        return service().cleanup_execution(event["detail"]["executionArn"])
    if event.get("action") == "sweep":
        return service().sweep(event["state_machine_arn"])
    return ACTIONS[event["action"]](service(), event["run"])
