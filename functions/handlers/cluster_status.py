"""State "Check Cluster Status": refreshes the cluster's status while it is being created."""

from handlers._service import service


def handler(event, context):
    return service().cluster_status(event)
