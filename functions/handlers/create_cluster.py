"""State "Create Cluster": checks the execution input and the deployed plan, then creates the cluster."""

from handlers._service import service


def handler(event, context):
    return service().create_cluster(event)
