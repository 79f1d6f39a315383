"""Cluster backends: create, watch and delete the cluster a run uses. One backend per module."""

from stepcluster.clusters.base import ClusterBackend, HeadNode

__all__ = ["ClusterBackend", "HeadNode", "get_backend"]


def get_backend(settings) -> ClusterBackend:
    from stepcluster.clusters.existing import ExistingHeadNode

    backends = {"existing": ExistingHeadNode}
    try:
        return backends[settings.backend](settings)
    except KeyError:
        raise ValueError(f"unknown cluster backend {settings.backend!r}") from None
