"""State "Prepare Head Node": checks the scheduler answers and makes the run's folder."""

from stepcluster.runtime import service


def handler(event, context):
    return service().prepare_head_node(event)
