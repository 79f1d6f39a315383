"""State "Submit Jobs": stages and submits the next job, or every job in parallel mode."""

from stepcluster.runtime import service


def handler(event, context):
    return service().submit_jobs(event)
