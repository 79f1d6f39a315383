"""A head node the user already has: nothing is created, and nothing is stopped.

"Create" checks the head node answers (with its pinned host key) and the scheduler is there;
"delete" is done by the run service, which cancels the run's leftover jobs and removes the
run's folder: the cluster itself stays as it was.
"""

from __future__ import annotations

from stepcluster.clusters.base import ClusterBackend, HeadNode


class ExistingHeadNode(ClusterBackend):
    name = "existing"

    def __init__(self, settings):
        self.settings = settings

    def create(self, cluster_name: str, execution: str) -> dict:
        node = self.head_node({})
        # The record shows where the run goes; the pinned key stays in the deployment settings.
        return {"backend": self.name, "name": cluster_name, "status": "READY",
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
