"""State "Poll Jobs": one polling round over every job in flight (one SSH connection)."""

from stepcluster.runtime import run_task


def handler(event, context):
    return run_task("poll_jobs", event, context=context)
