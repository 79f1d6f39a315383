"""Cluster backends: create, watch and delete the cluster a run uses. One backend per module."""

from stepcluster.clusters.base import ClusterBackend, HeadNode

__all__ = ["ClusterBackend", "HeadNode", "get_backend"]


def get_backend(settings, plan) -> ClusterBackend:
    """The deployment's backend, with the cluster configuration the plan carries."""
    if settings.backend == "existing":
        from stepcluster.clusters.existing import ExistingHeadNode
        return ExistingHeadNode(settings)
    if settings.backend == "parallelcluster":
        from stepcluster.clusters.parallelcluster import ParallelClusterBackend
        from stepcluster.clusters.parallelcluster_config import load_parallelcluster_config
        return ParallelClusterBackend(
            settings, cluster_config=load_parallelcluster_config(plan.cluster_config_path()))
    if settings.backend == "cfncluster":
        from stepcluster.clusters.cfncluster import CfnClusterBackend
        return CfnClusterBackend(settings, config_path=str(plan.cluster_config_path()))
    from stepcluster.errors import PlanError
    raise PlanError(f"unknown cluster backend {settings.backend!r}: the deployment's Backend "
                    "parameter is one of existing, parallelcluster, cfncluster")
