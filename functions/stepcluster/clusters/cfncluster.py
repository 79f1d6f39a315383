"""A cfncluster 1.6 cluster per execution: cfncluster's own code creates and deletes it.

create and delete call cfncluster's Python entry points (`cfncluster.cfncluster.create` /
`.delete`, the functions behind `cfncluster create NAME --nowait`), always with nowait=True: a
cluster takes 10+ minutes, and the state machine polls with `status`. Everything is read back
with boto3 (cfncluster's own `status` only prints): the stack `cfncluster-NAME`, its outputs
(MasterPrivateIP, MasterPublicIP, ClusterUser), its Scheduler parameter and its events.

cfncluster reports errors by printing and calling sys.exit(1) (sys.exit(0) when a delete
finished); SystemExit is caught here and turned into a ClusterError carrying cfncluster's own
message (its logger `cfncluster.cfncluster` and its stdout are captured while it runs).

Safety: the stack is tagged `stepcluster:execution = <execution ARN>`. A retried create adopts a
stack carrying this execution's tag; a stack of that name belonging to anything else is "in
use" (InputError). Nothing is deleted that does not carry this execution's tag.

The host key the run pins for the head node is read from the MasterServer instance's console
output (cloud-init prints it at first boot). When the console output has none,
`settings.head_node_host_key` is used if set: that is for local runs against moto, whose console
output cannot carry the local head node's key. In production leave it unset: the console output
is used, and the cluster stays CREATING until the key appears (or the create timeout passes).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
import re
import sys
import tempfile
import time
import types
import warnings

import boto3
from botocore.exceptions import ClientError

from stepcluster import logs
from stepcluster.clusters.base import (EXECUTION_TAG, ClusterBackend, HeadNode, RunContext,
                                       SshKey, tagged_instances)
from stepcluster.clusters.cfncluster_config import (SCHEDULERS, DEFAULT_SCHEDULER,
                                                    check_cfncluster_config, config_for_run,
                                                    read_cfncluster_config)
from stepcluster.clusters.hostkeys import read_host_key
from stepcluster.config import Problem
from stepcluster.errors import ClusterError, ConfigError, InputError

log = logs.logger(__name__)

STACK_PREFIX = "cfncluster-"
# CloudFormation: a letter first, then letters, digits and hyphens, 128 characters at most.
STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
CFNCLUSTER_LOGGER = "cfncluster.cfncluster"
OUTPUT_LIMIT = 8000            # characters of cfncluster output kept while it runs
MESSAGE_LIMIT = 1500           # characters of it put into an error message

IN_PROGRESS = {"CREATE_IN_PROGRESS", "REVIEW_IN_PROGRESS", "UPDATE_IN_PROGRESS",
               "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", "UPDATE_ROLLBACK_IN_PROGRESS",
               "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS"}
COMPLETE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE"}
CREATE_FAILED = {"CREATE_FAILED", "ROLLBACK_IN_PROGRESS", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED",
                 "UPDATE_ROLLBACK_FAILED", "UPDATE_FAILED"}


# --------------------------------------------------------------------------------------------
# Running cfncluster's own code


def _ensure_pkg_resources() -> None:
    """cfncluster 1.6.1's cfnconfig does `import pkg_resources`, only for
    `pkg_resources.get_distribution("cfncluster").version`. setuptools >= 82 no longer ships
    pkg_resources (pyproject pins setuptools<82 for development, but a Lambda package may hold
    no setuptools at all): if it cannot be imported, a minimal in-memory stand-in
    providing just get_distribution(name).version (from importlib.metadata) is put in
    sys.modules before cfncluster is imported. Nothing is installed on disk."""
    try:
        with warnings.catch_warnings():     # setuptools 81 warns that pkg_resources is deprecated
            warnings.simplefilter("ignore")
            import pkg_resources  # noqa: F401
        return
    except ImportError:
        pass
    shim = types.ModuleType("pkg_resources")
    shim.__doc__ = "stepcluster's minimal stand-in for cfncluster (get_distribution only)"

    class _Distribution:
        def __init__(self, name: str):
            self.project_name = name
            self.version = importlib.metadata.version(name)

    shim.get_distribution = _Distribution
    sys.modules.setdefault("pkg_resources", shim)


def _cfncluster_module():
    _ensure_pkg_resources()
    from cfncluster import cfncluster as module
    return module


class _Bounded(io.TextIOBase):
    """A text sink keeping the first `limit` characters written to it."""

    def __init__(self, limit: int):
        self.limit, self.parts, self.size = limit, [], 0

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        text = str(text)
        if self.size < self.limit:
            self.parts.append(text[: self.limit - self.size])
        self.size += len(text)
        return len(text)

    def getvalue(self) -> str:
        return "".join(self.parts) + (" [...]" if self.size > self.limit else "")


class _LogCapture(logging.Handler):
    def __init__(self, sink: _Bounded):
        super().__init__(logging.INFO)
        self.sink = sink
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call must not break the run
            message = str(record.msg)
        message = message.strip()
        self.sink.write(f"{record.levelname} {message}\n")
        if record.levelno >= logging.ERROR and message and len(self.errors) < 20:
            self.errors.append(message[:500])


class _Outcome:
    def __init__(self, ok: bool, code, output: str, message: str):
        self.ok, self.code, self.output, self.message = ok, code, output, message


def _run_cfncluster(func_name: str, cluster_name: str, config_file: str, *, region: str,
                    **extra) -> _Outcome:
    """Call cfncluster.cfncluster.<func_name>(args) with output captured; never sys.exit."""
    module = _cfncluster_module()
    func = getattr(module, func_name)
    # cfnconfig dispatches on args.func.__name__ and reads these attributes; template_url must
    # exist (None: the config's template_url is used). nowait: never let it sleep-poll.
    args = types.SimpleNamespace(
        func=func, cluster_name=cluster_name, config_file=config_file, nowait=True,
        norollback=False, template_url=None, cluster_template=None, region=region, tags=None,
        extra_parameters=None)
    for name, value in extra.items():
        setattr(args, name, value)
    printed = _Bounded(OUTPUT_LIMIT)
    logged = _Bounded(OUTPUT_LIMIT)
    capture = _LogCapture(logged)
    logger = logging.getLogger(CFNCLUSTER_LOGGER)
    old_level = logger.level
    logger.addHandler(capture)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    code, crashed = None, None
    try:
        with contextlib.redirect_stdout(printed):
            try:
                func(args)
            except SystemExit as exc:
                code = exc.code
            except Exception as exc:  # configparser errors and the like end as tracebacks
                crashed = f"{type(exc).__name__}: {exc}"
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
    stdout = " ".join(part.strip() for part in printed.getvalue().replace("\r", "\n").split("\n")
                      if part.strip())
    output = (logged.getvalue() + ("stdout: " + stdout if stdout else "")).strip()
    ok = crashed is None and code in (None, 0)
    message = ""
    if not ok:
        message = "; ".join(capture.errors) or stdout or crashed or \
            f"cfncluster {func_name} exited with status {code}"
        if crashed and crashed not in message:
            message = f"{message}; {crashed}"
        message = message[:MESSAGE_LIMIT]
    return _Outcome(ok, code, output, message)


# --------------------------------------------------------------------------------------------
# The backend


class CfnClusterBackend(ClusterBackend):
    name = "cfncluster"

    def __init__(self, settings, *, config_path: str, cfn_client=None, ec2_client=None,
                 cluster_template: str | None = None, clock=time.time):
        self.settings = settings
        self.config_path = str(config_path)
        self.cluster_template = cluster_template
        self._cfn = cfn_client
        self._ec2 = ec2_client
        self._clock = clock

    # -- settings and clients ---------------------------------------------------------------
    def _setting(self, name, default=None):
        value = getattr(self.settings, name, None)
        return default if value is None else value

    @property
    def region(self) -> str:
        """The region clusters are made in: the settings', else the clients', else boto3's."""
        region = self._setting("region")
        for client in (self._cfn, self._ec2):
            if not region and client is not None:
                region = client.meta.region_name
        return region or boto3.session.Session().region_name or "us-east-1"

    @property
    def cfn(self):
        if self._cfn is None:
            self._cfn = boto3.client("cloudformation", region_name=self.region)
        return self._cfn

    @property
    def ec2(self):
        if self._ec2 is None:
            self._ec2 = boto3.client("ec2", region_name=self.region)
        return self._ec2

    # -- names ------------------------------------------------------------------------------
    def check_name(self, cluster_name) -> str:
        name = super().check_name(cluster_name)
        if not STACK_NAME.fullmatch(STACK_PREFIX + name):
            raise InputError(f"cluster_name {name!r} gives the stack name {STACK_PREFIX + name!r}, "
                             f"which CloudFormation does not accept")
        return name

    @staticmethod
    def stack_name(cluster_name: str) -> str:
        return STACK_PREFIX + cluster_name

    # -- reading stacks ---------------------------------------------------------------------
    def _describe(self, name_or_id: str) -> dict | None:
        try:
            stacks = self.cfn.describe_stacks(StackName=name_or_id)["Stacks"]
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") == "ValidationError" and "does not exist" in error.get("Message", ""):
                return None
            raise
        return stacks[0] if stacks else None

    @staticmethod
    def _tags(stack: dict) -> dict:
        return {t["Key"]: t["Value"] for t in stack.get("Tags") or []}

    def _failure_reason(self, stack: dict, statuses: tuple[str, ...]) -> str:
        """The first (oldest) failed event's reason, with its logical id, like the console."""
        events = []
        try:
            pages = self.cfn.get_paginator("describe_stack_events").paginate(
                StackName=stack["StackId"])
            for number, page in enumerate(pages):
                events.extend(page.get("StackEvents") or [])
                if number >= 20:
                    break
        except ClientError:
            pass
        failed = [e for e in reversed(events) if e.get("ResourceStatus") in statuses]
        resources = [e for e in failed if e.get("ResourceType") != "AWS::CloudFormation::Stack"]
        for event in resources or failed:
            reason = event.get("ResourceStatusReason")
            if reason:
                return f"{event.get('LogicalResourceId')}: {reason}"
        return stack.get("StackStatusReason") or f"stack {stack['StackName']} is {stack['StackStatus']}"

    def _ref(self, cluster: dict) -> str:
        return cluster.get("stack_id") or cluster.get("stack_name") or self.stack_name(cluster["name"])

    # -- create -----------------------------------------------------------------------------
    def _record(self, ctx: RunContext, stack: dict, status: str = "CREATING") -> dict:
        created = stack.get("CreationTime")
        created_at = int(created.timestamp()) if hasattr(created, "timestamp") else int(self._clock())
        return {"backend": self.name, "name": ctx.cluster_name, "stack_name": stack["StackName"],
                "stack_id": stack["StackId"], "execution_arn": ctx.execution_arn,
                "region": self.region, "status": status,
                "poll_seconds": self._setting("cluster_poll_seconds", 30),
                "created_at": created_at,
                "create_timeout_seconds": self._setting("create_timeout_seconds", 3600)}

    def _adopt_or_refuse(self, ctx: RunContext, stack: dict) -> dict:
        owner = self._tags(stack).get(EXECUTION_TAG)
        if owner == ctx.execution_arn:
            log.info("cluster %s: adopting stack %s (%s) started by this execution",
                     ctx.cluster_name, stack["StackName"], stack["StackStatus"])
            return self._record(ctx, stack)
        whose = f"execution {owner}" if owner else "something other than a stepcluster run"
        raise InputError(
            f"cluster_name {ctx.cluster_name!r} is in use: the stack {stack['StackName']} "
            f"({stack['StackStatus']}) belongs to {whose}; choose another cluster_name")

    def _run_config(self, key: SshKey) -> str:
        """The text handed to cfncluster; ConfigError when the user's config is not usable."""
        path = self.config_path
        problems = [p for p in check_cfncluster_config(path, cluster_template=self.cluster_template)
                    if p.severity == "error"]
        if problems:
            raise ConfigError(problems)
        ini, _ = read_cfncluster_config(path)
        section = ini.cluster_section(self.cluster_template)
        key_name = key.key_name if key is not None else None
        if key_name is not None and (not key_name.strip() or re.search(r"[\x00-\x1f\x7f]", key_name)):
            raise ClusterError(f"unusable EC2 key pair name {key_name!r}")
        if not key_name and not ini.value(section, "key_name"):
            raise ConfigError([Problem(path, ini.sections[section].line, section, "key_name",
                                       "missing, and the run provides no key pair")])
        wanted = ini.value("aws", "aws_region_name")
        if wanted and wanted != self.region:
            opt = ini.option("aws", "aws_region_name")
            raise ConfigError([Problem(
                path, opt.line, "aws", "aws_region_name",
                f"is {wanted}, but the cluster functions work in {self.region}: set the "
                f"deployment's region to {wanted} or change this line")])
        return config_for_run(ini, key_name=key_name, cluster_template=self.cluster_template)

    def create(self, ctx: RunContext, key: SshKey) -> dict:
        name = self.check_name(ctx.cluster_name)
        stack_name = self.stack_name(name)
        existing = self._describe(stack_name)
        if existing is not None:
            return self._adopt_or_refuse(ctx, existing)
        text = self._run_config(key)
        fd, tmp = tempfile.mkstemp(prefix="stepcluster-cfncluster-", suffix=".config")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
            outcome = _run_cfncluster("create", name, tmp, region=self.region,
                                      cluster_template=self.cluster_template,
                                      tags={EXECUTION_TAG: ctx.execution_arn})
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        stack = self._describe(stack_name)
        if stack is not None:
            if self._tags(stack).get(EXECUTION_TAG) == ctx.execution_arn:
                if not outcome.ok:   # create_stack went through, a later call failed
                    log.warning("cluster %s: cfncluster reported %s, but the stack exists",
                                name, outcome.message)
                return self._record(ctx, stack)
            return self._adopt_or_refuse(ctx, stack)     # another create raced us: refuses
        if outcome.ok:
            raise ClusterError(f"cfncluster reported cluster {name} created, but there is no "
                               f"stack {stack_name} in {self.region}")
        raise ClusterError(f"cfncluster could not create cluster {name}: {outcome.message}")

    # -- status -----------------------------------------------------------------------------
    def _minutes(self, seconds) -> str:
        seconds = int(seconds)
        if seconds % 60 == 0:
            minutes = seconds // 60
            return f"{minutes} minute" + ("" if minutes == 1 else "s")
        return f"{seconds} seconds"

    def _still_creating(self, cluster: dict, waiting_for: str) -> dict:
        timeout = cluster.get("create_timeout_seconds", self._setting("create_timeout_seconds", 3600))
        started = cluster.get("created_at") or self._clock()
        if self._clock() - started > timeout:
            return self._failed(cluster, f"cluster {cluster['name']} not ready after "
                                         f"{self._minutes(timeout)} ({waiting_for})")
        record = {k: v for k, v in cluster.items() if k not in ("reason", "head_node")}
        return {**record, "status": "CREATING", "waiting_for": waiting_for}

    @staticmethod
    def _failed(cluster: dict, reason: str) -> dict:
        record = {k: v for k, v in cluster.items() if k not in ("waiting_for", "head_node")}
        return {**record, "status": "FAILED", "reason": reason}

    def _head_node_host_key(self, stack: dict) -> tuple[str | None, str | None]:
        try:
            resource = self.cfn.describe_stack_resource(StackName=stack["StackId"],
                                                        LogicalResourceId="MasterServer")
            instance_id = resource["StackResourceDetail"].get("PhysicalResourceId")
            if instance_id:
                found = read_host_key(self.ec2, instance_id)
                if found:
                    return found, "console"
        except ClientError as exc:
            log.info("no console output for the head node yet: %s", exc)
        pinned = self._setting("head_node_host_key")
        if pinned:
            return pinned.strip(), "settings"
        return None, None

    def status(self, cluster: dict) -> dict:
        stack = self._describe(self._ref(cluster))
        if stack is None or stack["StackStatus"] == "DELETE_COMPLETE":
            return self._failed(cluster, f"the cluster's stack {cluster.get('stack_name')} "
                                         f"disappeared (deleted outside this run)")
        state = stack["StackStatus"]
        if state in CREATE_FAILED:
            return self._failed(cluster, f"{state}: "
                                + self._failure_reason(stack, ("CREATE_FAILED", "UPDATE_FAILED")))
        if state.startswith("DELETE"):
            return self._failed(cluster, f"the cluster's stack is being deleted ({state})")
        if state not in COMPLETE:
            return self._still_creating(cluster, f"stack {state}")

        outputs = {o["OutputKey"]: o.get("OutputValue") for o in stack.get("Outputs") or []}
        params = {p["ParameterKey"]: p.get("ParameterValue") for p in stack.get("Parameters") or []}
        public = bool(self._setting("use_public_address", False))
        host_output = "MasterPublicIP" if public else "MasterPrivateIP"
        host = outputs.get(host_output)
        if not host:
            why = (" (use_public_address is set, but the master subnet gives no public IP: set "
                   "use_public_ips = true in the [vpc] section, or reach the private address)"
                   if public else "")
            return self._failed(cluster, f"the stack has no {host_output} output{why}")
        user = outputs.get("ClusterUser")
        if not user:
            return self._failed(cluster, "the stack has no ClusterUser output")
        scheduler = params.get("Scheduler") or DEFAULT_SCHEDULER
        if scheduler not in SCHEDULERS:
            return self._failed(cluster, f"the cluster runs scheduler {scheduler!r}; supported: "
                                         f"{', '.join(SCHEDULERS)}")
        host_key, source = self._head_node_host_key(stack)
        if not host_key:
            return self._still_creating(cluster, "the head node's SSH host key in its console output")
        record = {k: v for k, v in cluster.items() if k not in ("reason", "waiting_for")}
        return {**record, "status": "READY", "host_key_source": source,
                "head_node": {"host": host, "port": int(self._setting("head_node_port", 22)),
                              "user": user, "scheduler": scheduler, "host_key": host_key}}

    def head_node(self, cluster: dict) -> HeadNode:
        if cluster.get("status") != "READY" or not cluster.get("head_node"):
            raise ClusterError(f"cluster {cluster.get('name')} is not ready "
                               f"(status {cluster.get('status')})")
        return HeadNode.from_dict(cluster["head_node"])

    # -- delete -----------------------------------------------------------------------------
    def _delete_config(self) -> str:
        """cfncluster's delete only needs region and credentials from a config, but cfnconfig
        insists on a cluster section with key_name and vpc_settings; this minimal file also keeps
        delete independent of the user's config (changed or gone by then)."""
        return ("[global]\ncluster_template = stepcluster\nupdate_check = false\n"
                "sanity_check = false\n\n[aws]\n\n[cluster stepcluster]\n"
                "key_name = unused-by-delete\nvpc_settings = stepcluster\n\n[vpc stepcluster]\n")

    def instances(self, cluster: dict) -> list[dict]:
        return tagged_instances(self.ec2, cluster.get("execution_arn"))

    def delete(self, cluster: dict) -> dict:
        stack = self._describe(self._ref(cluster))
        if stack is None or stack["StackStatus"] == "DELETE_COMPLETE":
            return {**cluster, "status": "DELETED"}
        owner = self._tags(stack).get(EXECUTION_TAG)
        if not cluster.get("execution_arn") or owner != cluster.get("execution_arn"):
            return {**cluster, "status": "DELETED",
                    "note": f"left alone: stack {stack['StackName']} is not tagged with this "
                            f"execution ({EXECUTION_TAG}={owner!r})"}
        if stack["StackStatus"] == "DELETE_IN_PROGRESS":
            return {**cluster, "status": "DELETING"}
        name = stack["StackName"][len(STACK_PREFIX):]
        fd, tmp = tempfile.mkstemp(prefix="stepcluster-cfncluster-delete-", suffix=".config")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self._delete_config())
            outcome = _run_cfncluster("delete", name, tmp, region=self.region)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        after = self._deletion_record(cluster, stack["StackId"])
        if after["status"] == "LIVE":
            if not outcome.ok:
                raise ClusterError(f"cfncluster could not delete cluster {name}: {outcome.message}")
            # delete_stack was accepted; the stack may not show DELETE_IN_PROGRESS yet.
            after = {**after, "status": "DELETING"}
        return after

    def _deletion_record(self, cluster: dict, ref: str) -> dict:
        stack = self._describe(ref)
        record = {k: v for k, v in cluster.items() if k not in ("reason",)}
        if stack is None or stack["StackStatus"] == "DELETE_COMPLETE":
            return {**record, "status": "DELETED"}
        state = stack["StackStatus"]
        if state == "DELETE_IN_PROGRESS":
            return {**record, "status": "DELETING"}
        if state == "DELETE_FAILED":
            return {**record, "status": "DELETE_FAILED",
                    "reason": self._failure_reason(stack, ("DELETE_FAILED",))}
        return {**record, "status": "LIVE", "stack_status": state}

    def deletion_status(self, cluster: dict) -> dict:
        record = self._deletion_record(cluster, self._ref(cluster))
        if record["status"] == "LIVE":          # deletion never started (or was undone): start it
            return self.delete(cluster)
        return record

    # -- cleanup after an abort -------------------------------------------------------------
    def find_clusters(self, execution_arn: str) -> list[dict]:
        found = []
        for page in self.cfn.get_paginator("describe_stacks").paginate():
            for stack in page.get("Stacks") or []:
                if (not stack["StackName"].startswith(STACK_PREFIX) or stack.get("ParentId")
                        or stack["StackStatus"] == "DELETE_COMPLETE"
                        or self._tags(stack).get(EXECUTION_TAG) != execution_arn):
                    continue
                state = stack["StackStatus"]
                status = ("DELETING" if state == "DELETE_IN_PROGRESS" else
                          "DELETE_FAILED" if state == "DELETE_FAILED" else
                          "FAILED" if state in CREATE_FAILED else "CREATING")
                found.append({"backend": self.name, "name": stack["StackName"][len(STACK_PREFIX):],
                              "stack_name": stack["StackName"], "stack_id": stack["StackId"],
                              "execution_arn": execution_arn, "region": self.region,
                              "status": status, "stack_status": state,
                              "poll_seconds": self._setting("cluster_poll_seconds", 30)})
        return found
