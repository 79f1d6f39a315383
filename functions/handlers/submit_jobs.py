"""State "Submit Jobs": stages and submits the next job, or every job in parallel mode."""

from stepcluster.runtime import run_task


def handler(event, context):
    return run_task("submit_jobs", event, context=context)
