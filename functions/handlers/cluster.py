"""The cluster's lifecycle (AWS APIs and the cluster tools; no SSH), for the states "Create
Cluster", "Check Cluster Status", "Delete Cluster" and "Check Deletion" ({"action", "run"}),
and for the EventBridge rule that fires when an execution ends ABORTED, TIMED_OUT or FAILED:
an aborted or timed-out execution never reaches its own teardown, so the cleanup deletes what
carries its tag."""

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
    return ACTIONS[event["action"]](service(), event["run"])
