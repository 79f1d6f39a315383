"""State "Cancel Jobs": cancels the run's jobs still queued or running after a failure."""

from stepcluster.runtime import run_task


def handler(event, context):
    return run_task("cancel_jobs", event, context=context)
