"""State "Cancel Jobs": cancels the run's jobs still queued or running after a failure."""

from stepcluster.runtime import service


def handler(event, context):
    return service().cancel_jobs(event)
