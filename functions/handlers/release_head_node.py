"""State "Release Head Node": keeps the jobs' results, cancels leftover jobs and removes the
run's folder. Also, for the abort cleanup of a created cluster ({"action": "release_aborted",
"execution", "cluster"}, from the cluster function, which cannot reach the head node), the same
before that cluster is deleted."""

from stepcluster.runtime import cleanup_task, run_task, service


def handler(event, context):
    if isinstance(event, dict) and event.get("action") == "release_aborted":
        return cleanup_task(event["execution"],
                            lambda: service().release_aborted(event["execution"], event["cluster"]))
    return run_task("release_head_node", event, context=context)
