"""What every cluster backend provides to a run.

A backend creates, watches and deletes one cluster per execution. Every method is safe to call
again (Lambda retries, a cleanup after an abort): create adopts a cluster this execution
already started, delete of a cluster already gone is done, and nothing is ever deleted that
does not carry this execution's tag.

The cluster record (`run.cluster` in the state machine) is a flat dict the backend owns:

    {"backend": "parallelcluster", "name": "my-cluster", "status": "CREATING",
     "poll_seconds": 30, "created_at": 1764460000, "create_timeout_seconds": 3600,
     "head_node": {"host": ..., "port": 22, "user": ..., "scheduler": ..., "host_key": ...},
     "reason": "...", ...backend fields (stack name, key pair...)}

Statuses: CREATING READY FAILED (create); DELETING DELETED DELETE_FAILED RELEASED KEPT (delete).
"""

from __future__ import annotations

import abc
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from stepcluster.errors import InputError

# Safe everywhere a cluster name goes (stack names, tags, folder names): ParallelCluster's
# rule (a letter first, at most 60 characters), with the characters CloudFormation allows.
CLUSTER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,59}$")
#: Tag put on everything a run creates, so a cleanup can find it from the execution alone.
EXECUTION_TAG = "stepcluster:execution"


@dataclass(frozen=True)
class RunContext:
    """Who is asking: the execution (its name and ARN) and the cluster name it was given."""

    execution: str
    execution_arn: str
    cluster_name: str


@dataclass(frozen=True)
class SshKey:
    """The key the run logs in with: an EC2 key pair name and the secret holding its private part."""

    key_name: str | None
    secret_arn: str
    owned: bool  # True: made for this run, deleted with it; False: the user's, never deleted


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
        return cls(**{k: data[k] for k in ("host", "port", "user", "scheduler", "host_key")})


class ClusterBackend(abc.ABC):
    name: str
    #: False for a head node the user keeps (nothing to create or delete)
    creates_clusters: bool = True

    def check_name(self, cluster_name) -> str:
        """The name, if this backend accepts it; InputError naming the rule otherwise."""
        if not isinstance(cluster_name, str) or not CLUSTER_NAME.fullmatch(cluster_name):
            raise InputError(
                f"cluster_name must start with a letter and hold at most 60 letters, digits or "
                f"hyphens; got {cluster_name!r}")
        return cluster_name

    @abc.abstractmethod
    def create(self, ctx: RunContext, key: SshKey) -> dict:
        """Start creating the cluster; return its record (status CREATING or READY).

        A cluster of that name already tagged with this execution is adopted (a retried
        create); one of that name belonging to anything else raises InputError ("in use").
        """

    @abc.abstractmethod
    def status(self, cluster: dict) -> dict:
        """The record, refreshed: READY (with head_node), CREATING, or FAILED (with reason)."""

    @abc.abstractmethod
    def head_node(self, cluster: dict) -> HeadNode:
        """Where to SSH to, once the cluster is READY."""

    @abc.abstractmethod
    def delete(self, cluster: dict) -> dict:
        """Start deleting: the record with status DELETING, DELETED, or DELETE_FAILED (reason)."""

    @abc.abstractmethod
    def deletion_status(self, cluster: dict) -> dict:
        """The record during deletion: DELETING, DELETED or DELETE_FAILED (with reason)."""

    def find_clusters(self, execution_arn: str) -> list[dict]:
        """Records of the live clusters tagged with this execution (for the abort cleanup)."""
        return []

    def instances(self, cluster: dict) -> list[dict]:
        """The EC2 instances the run's cluster ran, for its usage: [{"type", "launched",
        "ended"}] (epochs; "ended" None while it runs). An existing head node is not the run's:
        none."""
        return []


#: "User initiated (2026-12-06 10:00:00 GMT)": when EC2 says an instance stopped or ended (moto
#: writes UTC).
_TRANSITION_TIME = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")


def tagged_instances(ec2, execution_arn: str | None) -> list[dict]:
    """The instances carrying this execution's tag (the cluster tools copy it onto what they
    launch: CloudFormation onto the stack's instances, ParallelCluster from its config's Tags
    onto head and compute nodes), still listed by EC2 (terminated ones stay about an hour)."""
    if not execution_arn:
        return []
    found = []
    for page in ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": f"tag:{EXECUTION_TAG}", "Values": [execution_arn]}]):
        for reservation in page.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                ended = None
                if instance.get("State", {}).get("Name") in ("stopped", "terminated", "shutting-down"):
                    when = _TRANSITION_TIME.search(instance.get("StateTransitionReason") or "")
                    if when:
                        ended = int(datetime.strptime(when.group(1), "%Y-%m-%d %H:%M:%S")
                                    .replace(tzinfo=timezone.utc).timestamp())
                found.append({"type": instance.get("InstanceType"), "id": instance.get("InstanceId"),
                              "launched": int(instance["LaunchTime"].timestamp()), "ended": ended})
    return found
