"""State "Release Head Node": cancels leftover jobs and removes the run's folder."""

from stepcluster.runtime import service


def handler(event, context):
    return service().release_head_node(event)
