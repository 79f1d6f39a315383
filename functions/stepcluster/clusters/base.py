"""What every cluster backend provides to a run."""

from __future__ import annotations

import abc
import re
from dataclasses import asdict, dataclass

from stepcluster.errors import InputError

# Safe everywhere a cluster name goes (stack names, tags, folder names): ParallelCluster's
# rule (a letter first, at most 60 characters), with the characters CloudFormation allows.
CLUSTER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,59}$")


@dataclass(frozen=True)
class HeadNode:
    host: str
    port: int
    user: str
    scheduler: str
    host_key: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HeadNode":
        return cls(**data)


class ClusterBackend(abc.ABC):
    """Create/inspect/delete one cluster. Every method is safe to call again (retries)."""

    name: str

    def check_name(self, cluster_name) -> str:
        if not isinstance(cluster_name, str) or not CLUSTER_NAME.match(cluster_name):
            raise InputError(
                f"cluster_name must start with a letter and hold at most 60 letters, digits or "
                f"hyphens; got {cluster_name!r}")
        return cluster_name

    @abc.abstractmethod
    def create(self, cluster_name: str, execution: str) -> dict:
        """Start creating; returns the cluster record: {"status": READY|CREATING|FAILED, ...}."""

    @abc.abstractmethod
    def status(self, cluster: dict) -> dict:
        """The cluster record, refreshed."""

    @abc.abstractmethod
    def head_node(self, cluster: dict) -> HeadNode:
        """Where to SSH to, once the cluster is READY."""

    @abc.abstractmethod
    def delete(self, cluster: dict) -> dict:
        """Delete (idempotent: a cluster already gone counts as deleted)."""
