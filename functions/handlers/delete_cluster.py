"""State "Delete Cluster": releases the cluster on every path (idempotent)."""

from handlers._service import service


def handler(event, context):
    return service().delete_cluster(event)
