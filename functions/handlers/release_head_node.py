"""State "Release Head Node": cancels leftover jobs and removes the run's folder."""

from stepcluster.runtime import run_task


def handler(event, context):
    return run_task("release_head_node", event)
