"""AWS ParallelCluster 3: one cluster per run, driven through `pcluster.lib` (kwargs only).

How pcluster.lib behaves (checked with aws-parallelcluster 3.16.1; see the project's research
notes): every function takes keyword arguments only; `cluster_configuration` given as a *string*
is a FILE PATH, so the configuration goes in as a dict (pcluster dumps it to YAML itself);
optional kwargs are omitted rather than passed as None (None reaches pcluster's coercion and
fails); errors are `pcluster.api.errors.*` exceptions with `.code` (HTTP status) and `.content`
(a model: `str(e)` is empty, the text is `e.content.to_dict()["message"]`), or
`pcluster.cli.exceptions.*` with `.data` for bad parameters. describe/delete of a cluster that
does not exist raise NotFoundException (404). The first API call of a process fetches the list of
supported regions over the network unless `pcluster.utils.retrieve_supported_regions.cache` is
seeded (done below from the file pcluster ships, so no call hangs in a VPC without egress).
pcluster also sets os.environ["AWS_DEFAULT_REGION"] as a side effect.

Decisions:

* ``rollback_on_failure=False``: a failed creation stays in CREATE_FAILED with its head node, so
  the failure reason and the console output stay readable until our delete, which runs on every
  path anyway. With rollback, CloudFormation would tear the stack down once by itself and our
  delete would then race the rollback (ROLLBACK_IN_PROGRESS) for nothing.
* ``wait`` is never passed: creation takes 10+ minutes; the state machine polls `status`.
* The run's key pair replaces any ``HeadNode.Ssh.KeyName`` of the user's config (the run holds
  that key's private part, not the user's). Without either, create refuses to start a cluster
  nobody could log in to.
* Ownership: create tags the cluster ``stepcluster:execution = <execution ARN>`` (top-level
  ``Tags``: ParallelCluster propagates them to the stack and its resources). The record keeps
  that ARN; delete removes only a cluster whose describe shows this tag with that value.
  A record without ``execution_arn`` cannot prove ownership and its cluster is left alone.
* Host key: the head node's SSH host key is read from its EC2 console output (cloud-init prints
  it at first boot). That can lag CREATE_COMPLETE by minutes, so the record stays CREATING until
  the key appears or the create timeout passes (then FAILED, with a reason saying so).
* Address: the head node's private IP, or its public IP when ``settings.use_public_address``
  (a ClusterError when the head node has none: the subnet gives no public IP).
"""

from __future__ import annotations

import copy
import re
import time
from datetime import datetime

from stepcluster import logs
from stepcluster.clusters.base import (EXECUTION_TAG, ClusterBackend, HeadNode, RunContext, SshKey,
                                      tagged_instances)
from stepcluster.clusters.hostkeys import read_host_key
from stepcluster.errors import ClusterError, InputError

LOG = logs.logger(__name__)

#: The AWS ParallelCluster versions this backend runs on: their Lambda layer is built for
#: python3.12 (the function's runtime) and their pcluster.lib takes the keyword arguments used
#: here. template.yaml's ParallelClusterVersion offers exactly these (a test checks; the evidence
#: is written next to that parameter). A layer given by ParallelClusterLayerArn may hold any
#: version: create refuses one not listed, before anything is made; describe and delete work
#: with any, so that tearing a cluster down never depends on this list.
PARALLELCLUSTER_VERSIONS = ("3.11.1", "3.12.0", "3.13.0", "3.13.1", "3.13.2", "3.14.0", "3.14.1",
                            "3.14.2", "3.15.0", "3.15.1", "3.16.0", "3.16.1")

#: pcluster.lib's own pattern for cluster names is ^[a-zA-Z][a-zA-Z0-9-]+$ (two characters at
#: least) and its ClusterNameValidator caps the length at 60.
PCLUSTER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,59}$")

#: Default login user per Image.Os: pcluster.constants.OS_MAPPING in 3.16.1. Used when pcluster
#: is not importable (it is in the Lambda that has the ParallelCluster layer).
DEFAULT_USERS = {
    "alinux2023": "ec2-user",
    "rhel8": "ec2-user",
    "rhel9": "ec2-user",
    "ubuntu2204": "ubuntu",
    "ubuntu2404": "ubuntu",
    "rocky8": "rocky",
    "rocky9": "rocky",
}

#: Bounds for error text that goes into records and Step Functions causes.
_MAX_ITEM = 400
_MAX_ITEMS = 10
_MAX_MESSAGE = 2000


def default_user(os_name) -> str | None:
    """The login user ParallelCluster sets up for an Image.Os, or None if unknown."""
    try:
        from pcluster.constants import OS_MAPPING  # the installed version's own table
        user = (OS_MAPPING.get(os_name) or {}).get("user")
        if user:
            return user
    except Exception:  # noqa: BLE001 - pcluster missing or changed: our table
        pass
    return DEFAULT_USERS.get(os_name)


def _bounded(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_details(exc: BaseException) -> tuple[int | None, dict]:
    """(HTTP status or None, content dict) of a pcluster exception, by duck typing."""
    content = getattr(exc, "content", None)
    data: dict = {}
    if content is not None:
        if hasattr(content, "to_dict"):
            try:
                data = content.to_dict() or {}
            except Exception:  # noqa: BLE001
                data = {"message": str(content)}
        elif isinstance(content, dict):
            data = content
        else:
            data = {"message": str(content)}
    elif isinstance(getattr(exc, "data", None), dict):  # pcluster.cli.exceptions.CLIException
        data = exc.data
    code = getattr(exc, "code", None)
    if not isinstance(code, int):
        code = 400 if isinstance(getattr(exc, "data", None), dict) else None
    return code, data


def _error_message(exc: BaseException) -> str:
    """A readable, bounded message for a pcluster exception; never empty."""
    _, data = _error_details(exc)
    message = data.get("message") or str(exc) or type(exc).__name__
    items = data.get("configuration_validation_errors") or data.get("configurationValidationErrors")
    if items:
        shown = []
        for item in sorted(items, key=lambda i: 0 if _get(i, "level") == "ERROR" else 1)[:_MAX_ITEMS]:
            level, kind, text = _get(item, "level"), _get(item, "type"), _get(item, "message")
            label = "/".join(x for x in (level, kind) if x)
            shown.append(_bounded(f"[{label}] {text}" if label else str(text), _MAX_ITEM))
        more = len(items) - len(shown)
        message = f"{message.rstrip('.')}: " + "; ".join(shown) + (f"; ...and {more} more" if more > 0 else "")
    return _bounded(message)


def _get(item, key):
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


def _is_pcluster_error(exc: BaseException) -> bool:
    return (type(exc).__module__ or "").startswith("pcluster.") or hasattr(exc, "content") \
        or isinstance(getattr(exc, "data", None), dict)


def _tags(description: dict) -> dict:
    return {t.get("key"): t.get("value") for t in description.get("tags") or [] if isinstance(t, dict)}


def _failure_reason(description: dict) -> str:
    failures = [
        ": ".join(x for x in (f.get("failureCode"), f.get("failureReason")) if x)
        for f in description.get("failures") or [] if isinstance(f, dict)
    ]
    failures = [f for f in failures if f]
    status = description.get("clusterStatus")
    stack = description.get("cloudFormationStackStatus")
    where = f"cluster {description.get('clusterName')} is {status}" + (
        f" (stack {stack})" if stack and stack != status else "")
    return _bounded(where + (": " + "; ".join(failures) if failures else ""))


def _timestamp(text) -> int | None:
    try:
        return int(datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp())
    except (TypeError, ValueError):
        return None


class ParallelClusterBackend(ClusterBackend):
    name = "parallelcluster"

    def __init__(self, settings, *, pcluster=None, ec2_client=None, cluster_config: dict):
        if not isinstance(cluster_config, dict):
            raise ClusterError("the ParallelCluster cluster configuration must be a mapping")
        self.settings = settings
        self._pc = pcluster
        self._pcluster_version = None  # read when pcluster.lib is imported here
        self._ec2 = ec2_client
        self.cluster_config = copy.deepcopy(cluster_config)  # never mutate the caller's

    # ---------------------------------------------------------------- plumbing
    @property
    def region(self) -> str | None:
        region = getattr(self.settings, "region", None) or self.cluster_config.get("Region")
        return region if isinstance(region, str) and region else None

    @property
    def pc(self):
        """pcluster.lib, imported on first use (about 1 s; only in the Lambda with the layer)."""
        if self._pc is None:
            try:
                import pcluster.lib as pc
            except Exception as exc:  # noqa: BLE001 - ImportError, or a layer built for another runtime
                raise ClusterError(
                    f"the ParallelCluster library (pcluster.lib) cannot be imported: {exc}; the "
                    f"function needs the ParallelCluster Lambda layer and its Python runtime") from exc
            _seed_supported_regions()
            self._pcluster_version = _installed_version()
            self._pc = pc
        return self._pc

    def _check_version(self) -> None:
        """Refuse a pcluster.lib whose version is not in PARALLELCLUSTER_VERSIONS (create only)."""
        self.pc  # noqa: B018 - imports pcluster.lib, which reads its version
        version = self._pcluster_version
        if version is not None and version not in PARALLELCLUSTER_VERSIONS:
            raise ClusterError(
                f"the ParallelCluster layer holds aws-parallelcluster {version}, which stepcluster "
                f"does not list as working with its function (python3.12 and the same pcluster.lib "
                f"API): use one of {', '.join(PARALLELCLUSTER_VERSIONS)} (template parameter "
                f"ParallelClusterVersion, with ParallelClusterLayerArn empty)")

    @property
    def ec2(self):
        if self._ec2 is None:
            import boto3
            self._ec2 = boto3.client("ec2", region_name=self.region)
        return self._ec2

    def _region_kw(self) -> dict:
        return {"region": self.region} if self.region else {}

    def _call(self, what: str, fn_name: str, **kwargs):
        try:
            return getattr(self.pc, fn_name)(**kwargs, **self._region_kw())
        except ClusterError:
            raise
        except Exception as exc:
            if _is_pcluster_error(exc):
                raise ClusterError(f"{what}: {_error_message(exc)}") from exc
            raise

    def _describe(self, name: str) -> dict | None:
        """pc.describe_cluster, or None when ParallelCluster says there is no such cluster."""
        try:
            return self.pc.describe_cluster(cluster_name=name, **self._region_kw())
        except Exception as exc:
            if _is_pcluster_error(exc):
                code, _ = _error_details(exc)
                if code == 404:
                    return None
                raise ClusterError(f"describing cluster {name}: {_error_message(exc)}") from exc
            raise

    def _poll_seconds(self) -> int:
        return int(self.settings.cluster_poll_seconds)

    # ---------------------------------------------------------------- contract
    def check_name(self, cluster_name) -> str:
        if not isinstance(cluster_name, str) or not PCLUSTER_NAME.fullmatch(cluster_name):
            raise InputError(
                "cluster_name must be 2 to 60 characters, start with a letter and hold only "
                f"letters, digits and hyphens (ParallelCluster's rule); got {cluster_name!r}")
        return cluster_name

    def cluster_configuration(self, ctx: RunContext, key: SshKey) -> dict:
        """The user's config with the run's key pair and execution tag (a new dict)."""
        config = copy.deepcopy(self.cluster_config)
        head = config.setdefault("HeadNode", {})
        if not isinstance(head, dict):
            raise ClusterError("the ParallelCluster configuration's HeadNode must be a mapping")
        if key.key_name:
            ssh = head.get("Ssh")
            if not isinstance(ssh, dict):
                ssh = head["Ssh"] = {}
            ssh["KeyName"] = key.key_name
        elif not (head.get("Ssh") or {}).get("KeyName"):
            raise ClusterError(
                "no SSH key pair for the head node: the run has none and the ParallelCluster "
                "configuration sets no HeadNode.Ssh.KeyName")
        tags = config.get("Tags")
        tags = [t for t in tags if not (isinstance(t, dict) and t.get("Key") == EXECUTION_TAG)] \
            if isinstance(tags, list) else []
        tags.append({"Key": EXECUTION_TAG, "Value": ctx.execution_arn})
        config["Tags"] = tags
        return config

    def _record(self, name: str, ctx_arn: str, *, created_at: int | None = None,
                stack_arn: str | None = None) -> dict:
        record = {
            "backend": self.name,
            "name": name,
            "status": "CREATING",
            "poll_seconds": self._poll_seconds(),
            "created_at": created_at if created_at is not None else int(time.time()),
            "create_timeout_seconds": int(self.settings.create_timeout_seconds),
            "execution_arn": ctx_arn,
        }
        if stack_arn:
            record["stack_arn"] = stack_arn
        return record

    def create(self, ctx: RunContext, key: SshKey) -> dict:
        name = self.check_name(ctx.cluster_name)
        existing = self._describe(name)
        if existing is not None:
            return self._adopt(name, ctx, existing)
        config = self.cluster_configuration(ctx, key)
        self._check_version()
        try:
            response = self.pc.create_cluster(
                cluster_name=name, cluster_configuration=config, rollback_on_failure=False,
                **self._region_kw())
        except Exception as exc:
            if not _is_pcluster_error(exc):
                raise
            # A create that raced a retried one: adopt what this execution already started.
            existing = self._describe(name)
            if existing is not None and _tags(existing).get(EXECUTION_TAG) == ctx.execution_arn:
                return self._adopt(name, ctx, existing)
            raise ClusterError(f"ParallelCluster refused to create cluster {name}: "
                               f"{_error_message(exc)}") from exc
        summary = (response or {}).get("cluster") or {}
        for message in (response or {}).get("validationMessages") or []:
            LOG.warning("ParallelCluster validation %s: %s", _get(message, "level"), _get(message, "message"))
        return self._record(name, ctx.execution_arn, stack_arn=summary.get("cloudformationStackArn"))

    def _adopt(self, name: str, ctx: RunContext, description: dict) -> dict:
        owner = _tags(description).get(EXECUTION_TAG)
        if owner != ctx.execution_arn:
            raise InputError(
                f"cluster name {name} is already used by another cluster "
                f"({description.get('clusterStatus', 'unknown status')}"
                + (f", started by {owner}" if owner else ", not made by stepcluster")
                + "); choose another cluster_name")
        LOG.info("adopting cluster %s, already started by this execution", name)
        return self._record(name, ctx.execution_arn,
                            created_at=_timestamp(description.get("creationTime")),
                            stack_arn=description.get("cloudformationStackArn"))

    def _timed_out(self, record: dict) -> bool:
        timeout = int(record.get("create_timeout_seconds") or self.settings.create_timeout_seconds)
        created = int(record.get("created_at") or time.time())
        return time.time() - created > timeout

    def _timeout_reason(self, record: dict, what: str) -> str:
        timeout = int(record.get("create_timeout_seconds") or self.settings.create_timeout_seconds)
        return f"cluster {record['name']} not ready after {timeout // 60} minutes: {what}"

    def status(self, cluster: dict) -> dict:
        record = dict(cluster)
        record.pop("reason", None)
        name = record["name"]
        description = self._describe(name)
        if description is None:
            return {**record, "status": "FAILED",
                    "reason": f"cluster {name} disappeared while being created (deleted outside this run?)"}
        status = description.get("clusterStatus")
        if status in ("CREATE_IN_PROGRESS", "UPDATE_IN_PROGRESS"):
            if self._timed_out(record):
                return {**record, "status": "FAILED",
                        "reason": self._timeout_reason(record, f"still {status}")}
            return {**record, "status": "CREATING"}
        if status in ("CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_FAILED"):
            return self._ready(record, description)
        # CREATE_FAILED (stack CREATE_FAILED, ROLLBACK_*), DELETE_* while creating, anything else
        return {**record, "status": "FAILED", "reason": _failure_reason(description)}

    def _ready(self, record: dict, description: dict) -> dict:
        name = record["name"]
        head = description.get("headNode") or {}
        instance_id = head.get("instanceId")
        if not instance_id:
            if self._timed_out(record):
                return {**record, "status": "FAILED",
                        "reason": self._timeout_reason(record, "no head node reported")}
            return {**record, "status": "CREATING", "reason": "waiting for the head node to be reported"}
        if getattr(self.settings, "use_public_address", False):
            host = head.get("publicIpAddress")
            if not host:
                raise ClusterError(
                    f"the head node {instance_id} of cluster {name} has no public IP address, but "
                    f"the deployment connects over public addresses (use a subnet that assigns "
                    f"public IPs, or connect over the private address)")
        else:
            host = head.get("privateIpAddress")
            if not host:
                raise ClusterError(f"the head node {instance_id} of cluster {name} has no private IP address")
        image = self.cluster_config.get("Image")
        os_name = image.get("Os") if isinstance(image, dict) else None
        user = default_user(os_name)
        if not user:
            raise ClusterError(f"no known login user for Image.Os {os_name!r} of cluster {name}")
        try:
            host_key = read_host_key(self.ec2, instance_id)
        except Exception as exc:  # noqa: BLE001 - botocore ClientError (AccessDenied, throttling...)
            raise ClusterError(f"reading the console output of head node {instance_id}: {exc}") from exc
        if not host_key:
            if self._timed_out(record):
                return {**record, "status": "FAILED", "reason": self._timeout_reason(
                    record, f"the head node {instance_id} never printed its SSH host keys to its "
                            f"console output, so its identity cannot be verified (does the AMI run "
                            f"cloud-init's key printing?)")}
            return {**record, "status": "CREATING",
                    "reason": f"waiting for head node {instance_id} to print its SSH host keys"}
        node = HeadNode(host=host, port=int(self.settings.head_node_port), user=user,
                        scheduler="slurm", host_key=host_key)
        record.pop("reason", None)
        return {**record, "status": "READY", "head_node": node.to_dict()}

    def head_node(self, cluster: dict) -> HeadNode:
        data = cluster.get("head_node")
        if not isinstance(data, dict):
            raise ClusterError(f"cluster {cluster.get('name')} is not ready: no head node recorded")
        try:
            return HeadNode.from_dict(data)
        except KeyError as exc:
            raise ClusterError(f"cluster {cluster.get('name')}: head node record lacks {exc}") from exc

    def instances(self, cluster: dict) -> list[dict]:
        return tagged_instances(self.ec2, cluster.get("execution_arn"))

    def delete(self, cluster: dict) -> dict:
        name = cluster["name"]
        record = {k: v for k, v in cluster.items() if k != "reason"}
        description = self._describe(name)
        if description is None:
            return {**record, "status": "DELETED"}
        owner = _tags(description).get(EXECUTION_TAG)
        expected = cluster.get("execution_arn")
        if not expected or owner != expected:
            LOG.warning("not deleting cluster %s: tagged %r, this run is %r", name, owner, expected)
            return {**record, "status": "DELETED",
                    "note": f"cluster {name} is not ours ({EXECUTION_TAG}={owner!r}), left alone"}
        if description.get("clusterStatus") == "DELETE_IN_PROGRESS":
            return {**record, "status": "DELETING"}
        try:
            self.pc.delete_cluster(cluster_name=name, **self._region_kw())
        except Exception as exc:
            if not _is_pcluster_error(exc):
                raise
            code, _ = _error_details(exc)
            if code == 404:  # gone already (in moto even right after a successful delete)
                return {**record, "status": "DELETED"}
            if code == 400:  # a request ParallelCluster will never accept: retrying won't help
                return {**record, "status": "DELETE_FAILED",
                        "reason": f"ParallelCluster refused to delete cluster {name}: {_error_message(exc)}"}
            raise ClusterError(f"deleting cluster {name}: {_error_message(exc)}") from exc
        return {**record, "status": "DELETING"}

    def deletion_status(self, cluster: dict) -> dict:
        name = cluster["name"]
        record = {k: v for k, v in cluster.items() if k != "reason"}
        description = self._describe(name)
        if description is None:
            return {**record, "status": "DELETED"}
        status = description.get("clusterStatus")
        if status == "DELETE_IN_PROGRESS":
            return {**record, "status": "DELETING"}
        if status == "DELETE_FAILED":
            return {**record, "status": "DELETE_FAILED", "reason": _failure_reason(description)}
        if status and status.endswith("_IN_PROGRESS"):
            return {**record, "status": "DELETING"}  # e.g. a create being cancelled
        # Still standing in a stable state although its deletion was asked for: ask again
        # (delete checks ownership again and is idempotent).
        return self.delete(record)

    def find_clusters(self, execution_arn: str) -> list[dict]:
        found = []
        token = None
        while True:
            kwargs = {"next_token": token} if token else {}
            page = self._call("listing clusters", "list_clusters", **kwargs) or {}
            for summary in page.get("clusters") or []:
                name = summary.get("clusterName")
                if not name or summary.get("clusterStatus") == "DELETE_COMPLETE":
                    continue
                description = self._describe(name)
                if description is None or _tags(description).get(EXECUTION_TAG) != execution_arn:
                    continue
                status = description.get("clusterStatus") or ""
                found.append({
                    "backend": self.name, "name": name, "execution_arn": execution_arn,
                    "status": "DELETING" if status.startswith("DELETE") else
                              "CREATING" if status == "CREATE_IN_PROGRESS" else
                              "READY" if status in ("CREATE_COMPLETE", "UPDATE_COMPLETE") else "FAILED",
                    "poll_seconds": self._poll_seconds(),
                    **({"stack_arn": description["cloudformationStackArn"]}
                       if description.get("cloudformationStackArn") else {}),
                })
            token = page.get("nextToken")
            if not token:
                return found


def _installed_version() -> str | None:
    """The aws-parallelcluster version pcluster.lib was imported from, or None if unknown."""
    try:
        from importlib.metadata import version
        return version("aws-parallelcluster")
    except Exception:  # noqa: BLE001 - no distribution metadata: not refused for that
        LOG.warning("cannot read the version of aws-parallelcluster", exc_info=True)
        return None


def _seed_supported_regions() -> None:
    """Give pcluster its supported-regions list from the file it ships, so that its first API
    call does not fetch it from S3 (urlopen without a timeout: it would hang in a VPC without
    internet access until the Lambda times out)."""
    try:
        import os

        import pcluster.utils as utils
        if hasattr(utils.retrieve_supported_regions, "cache"):
            return
        path = os.path.join(os.path.dirname(utils.__file__), "resources", "supported-regions")
        with open(path, encoding="utf-8") as handle:
            utils.retrieve_supported_regions.cache = [r for r in handle.read().split("\n") if r]
    except Exception:  # noqa: BLE001 - pcluster falls back to fetching it itself
        LOG.debug("could not seed pcluster's supported regions", exc_info=True)
