"""State "Poll Jobs": one polling round over every job in flight (one SSH connection)."""

from stepcluster.runtime import service


def handler(event, context):
    return service().poll_jobs(event)
