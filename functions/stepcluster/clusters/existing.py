"""A head node the user already has: nothing is created, and nothing is stopped.

"Create" hands over the head node from the deployment settings (the service then checks that
it answers with its pinned host key and that the scheduler is there); "delete" releases it: the
service has already cancelled the run's leftover jobs and removed the run's folder.
"""

from __future__ import annotations

from stepcluster.clusters.base import ClusterBackend, HeadNode, RunContext, SshKey


class ExistingHeadNode(ClusterBackend):
    name = "existing"
    creates_clusters = False

    def __init__(self, settings):
        self.settings = settings

    def create(self, ctx: RunContext, key: SshKey) -> dict:
        node = self.head_node({})
        # The record shows where the run goes; the pinned key stays in the deployment settings.
        return {"backend": self.name, "name": ctx.cluster_name, "status": "READY",
                "head_node": {"host": node.host, "port": node.port, "user": node.user,
                              "scheduler": node.scheduler},
                "poll_seconds": self.settings.cluster_poll_seconds}

    def status(self, cluster: dict) -> dict:
        return cluster

    def head_node(self, cluster: dict) -> HeadNode:
        s = self.settings
        return HeadNode(s.head_node_host, s.head_node_port, s.head_node_user, s.scheduler,
                        s.head_node_host_key)

    def delete(self, cluster: dict) -> dict:
        return {**cluster, "status": "RELEASED"}

    def deletion_status(self, cluster: dict) -> dict:
        return cluster
