"""State "Prepare Head Node": checks the scheduler answers and makes the run's folder."""

from stepcluster.runtime import run_task


def handler(event, context):
    return run_task("prepare_head_node", event, context=context)
