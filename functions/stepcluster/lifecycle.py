"""The cluster's lifecycle: create, watch, delete (AWS APIs and the cluster tools; no SSH).

The states "Create Cluster", "Check Cluster Status", "Delete Cluster" and "Check Deletion",
and the deletion half of the abort cleanup. paramiko is never imported here: the ParallelCluster
function, which runs on another Python with its own layer, does not ship it.
"""

from __future__ import annotations

import math
import time

import difflib
import json
from dataclasses import dataclass
from typing import Any

from stepcluster import jobtable, logs
from stepcluster import resume as resume_module
from stepcluster import usage as usage_module
from stepcluster.clusters.base import RunContext, SshKey
from stepcluster.errors import InputError, PlanError
from stepcluster.executions import ENDED
from stepcluster.record import ClusterRecord, ClusterStatus, JobRecord, Phase, Run
from stepcluster.wiring import Wiring

log = logs.logger(__name__)

#: How long the abort cleanup waits for the Release Head Node function before it deletes the
#: cluster anyway (inside the cluster function's 120 s, with its listing and deletion calls).
RELEASE_WAIT_SECONDS = 75

#: Every key the execution input may hold.
INPUT_KEYS = ("cluster_name", "keep_cluster", "resume", "max_hours")
#: A budget longer than Step Functions' year would never bind.
MAX_HOURS = 8760
_INPUT_EXAMPLE = 'a JSON object like {"cluster_name": "my-cluster"}'
_JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", type(None): "null",
               int: "a number", float: "a number"}


@dataclass(frozen=True)
class RunInput:
    """The execution input, checked: what the user asked for when starting the execution."""

    cluster_name: Any       # checked by the backend, whose naming rules it is
    keep_cluster: bool = False
    resume: str | None = None   # an earlier execution (name or ARN) whose finished jobs are not run again
    max_hours: float | None = None  # past this since its start, the run stops its jobs and tears down


def parse_run_input(value: Any) -> RunInput:
    """The user's execution input, or InputError saying what it must be (with did-you-mean)."""
    if not isinstance(value, dict):
        what = _JSON_KINDS.get(type(value), "not an object")
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 200 else shown[:197] + "..."
        raise InputError(f"execution input must be {_INPUT_EXAMPLE}; got {what}: {shown}")
    unknown = sorted((k for k in value if k not in INPUT_KEYS), key=str)
    if unknown:
        described = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), INPUT_KEYS, n=1, cutoff=0.6)
            described.append(json.dumps(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise InputError(f"execution input has unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(described)}: the keys are {', '.join(INPUT_KEYS)}")
    if "cluster_name" not in value:
        raise InputError(f"execution input must be {_INPUT_EXAMPLE}: cluster_name is missing")
    keep = value.get("keep_cluster", False)
    if not isinstance(keep, bool):
        raise InputError(f"keep_cluster must be true or false, got {keep!r}")
    resume = value.get("resume")
    if resume is not None:
        resume_module.execution_name(resume)
    hours = value.get("max_hours")
    if hours is not None and (isinstance(hours, bool) or not isinstance(hours, (int, float))
                              or not 0 < hours <= MAX_HOURS):
        raise InputError(f"max_hours must be a number of hours above 0 and at most {MAX_HOURS} (a "
                         f"year), got {hours!r}")
    return RunInput(value["cluster_name"], keep, resume, hours)


def _lived(run: Run) -> Run:
    run = run.copy()
    run.usage = usage_module.cluster_lived(run.usage, run.started_at, int(time.time()))
    return run


class ClusterLifecycle:
    def __init__(self, wiring: Wiring):
        self.wiring = wiring

    def create_cluster(self, run: Run) -> Run:
        """Check the input and the plan, make the run's key, start creating the cluster."""
        w = self.wiring
        user_input = parse_run_input(run.input)
        plan = w.plan
        if run.plan_digest != plan.digest:
            raise PlanError(
                f"the state machine was deployed with jobs plan {run.plan_digest!r} but the "
                f"functions hold plan {plan.digest!r}: run `stepcluster preprocess` and deploy again")
        if plan.backend != w.settings.backend:
            raise PlanError(f"the plan was prepared for backend {plan.backend!r} but the deployment "
                            f"uses {w.settings.backend!r}: run `stepcluster preprocess` with --backend "
                            f"{w.settings.backend}")
        ctx = RunContext(run.execution, run.execution_arn or run.execution,
                         w.backend.check_name(user_input.cluster_name))
        if user_input.resume is not None:
            self._check_resume(user_input.resume, run)
        usage_module.parse_prices(w.settings.price_table)       # a bad table fails here, not at the end
        key = self._run_key(ctx)
        try:
            cluster = w.backend.create(ctx, key)
        except Exception:
            # InputError ("name in use") skips the teardown states: leave no key behind.
            if key.owned:
                w.keys.delete(ctx.execution)
            raise
        if w.backend.creates_clusters:
            cluster["key"] = {"key_name": key.key_name, "secret_arn": key.secret_arn, "owned": key.owned}
            cluster = self._undo_if_execution_ended(ctx, cluster, key)
        wide = jobtable.wide(len(plan.jobs), w.settings.jobs_in_record)
        created = Run(
            execution=ctx.execution, execution_arn=ctx.execution_arn, plan_digest=plan.digest,
            cluster_name=ctx.cluster_name, started_at=int(time.time()), keep_cluster=user_input.keep_cluster,
            order=plan.order,
            cluster=ClusterRecord.from_dict(cluster),
            jobs={} if wide else {job.name: JobRecord() for job in plan.jobs},
            jobs_table=jobtable.new_table(len(plan.jobs)) if wide else None,
            resume={"from": resume_module.execution_name(user_input.resume)} if user_input.resume else None,
            max_seconds=math.ceil(user_input.max_hours * 3600) if user_input.max_hours else None,
            next=0, phase=Phase.READY, wait_seconds=min(j.wait_time for j in plan.jobs))
        log.info("cluster %s: %s", ctx.cluster_name, cluster["status"])
        return created

    def _check_resume(self, reference: str, run: Run) -> None:
        """Before anything is created: the run to resume is one of this state machine's, it
        kept a manifest in this stack's bucket, and it has ended (InputError otherwise)."""
        w = self.wiring
        manifest = resume_module.earlier_manifest(w.s3, w.settings.artifacts_bucket, reference, run.execution_arn)
        earlier = manifest.get("execution_arn")
        if earlier and w.executions.status(earlier) == "RUNNING":
            raise InputError(f"resume: execution {earlier} is still running: stop it (its cleanup keeps "
                             "what its jobs wrote), then resume it")

    def _undo_if_execution_ended(self, ctx: RunContext, cluster: dict, key: SshKey) -> dict:
        """An abort or timeout while the cluster tool was creating the stack skips every teardown
        state, and the EventBridge cleanup it triggers may run before the stack exists (finding
        nothing), while this call goes on to create it. So, once the cluster is started, ask Step
        Functions whether this execution still runs; if it ended, delete what this call made (the
        cluster, through the backend's delete and its tag check, and the run's key), now. An
        execution that ends after this check finds the stack already there for its cleanup.

        A look-up that fails (no route to Step Functions, throttling) does not fail a run that is
        most likely alive: it is logged, and the periodic sweep catches a cluster left behind."""
        w = self.wiring
        try:
            status = w.executions.status(ctx.execution_arn)
        except Exception as exc:  # noqa: BLE001 - botocore errors, an ARN that is only a name
            log.warning("cannot tell whether execution %s still runs (%s: %s); if it ended, the "
                        "periodic sweep deletes cluster %s", ctx.execution_arn, type(exc).__name__,
                        exc, ctx.cluster_name)
            return cluster
        if status not in ENDED:     # RUNNING (or about to be, PENDING_REDRIVE); None: unknown here
            return cluster
        log.warning("execution %s is %s: deleting cluster %s and the run's key it just made",
                    ctx.execution_arn, status, ctx.cluster_name)
        try:
            deleted = w.backend.delete(cluster)
        finally:
            if key.owned:
                w.keys.delete(ctx.execution)
        if key.owned:
            deleted = {**deleted, "key": {**cluster["key"], "deleted": True}}
        return {**deleted, "execution_status": status}

    def _run_key(self, ctx: RunContext) -> SshKey:
        w, s = self.wiring, self.wiring.settings
        if not w.backend.creates_clusters or s.ssh_key_name:
            return SshKey(s.ssh_key_name, s.ssh_key_secret_id, owned=False)
        return w.keys.create(ctx)

    def cluster_status(self, run: Run) -> Run:
        return self._with_cluster(run, self.wiring.backend.status(run.cluster.to_dict()))

    def delete_cluster(self, run: Run) -> Run:
        """Delete the cluster (unless keep_cluster on success); a missing cluster is done."""
        if run.cluster is None:              # creation never started: nothing to delete
            return self._with_cluster(run, {"status": ClusterStatus.DELETED.value})
        if run.keep_cluster and run.phase == Phase.SUCCEEDED and run.failure is None:
            return _lived(self._with_cluster(run, {**run.cluster.to_dict(), "status": ClusterStatus.KEPT.value}))
        run = self._count_instances(run)
        return self._after_deletion(self._with_cluster(run, self.wiring.backend.delete(run.cluster.to_dict())))

    def _count_instances(self, run: Run) -> Run:
        """Before the cluster goes: the hours its instances ran, into the run's usage. Best
        effort: a count that fails must not keep the cluster alive."""
        try:
            instances = self.wiring.backend.instances(run.cluster.to_dict())
        except Exception as exc:  # noqa: BLE001 - botocore's errors: access, throttling
            log.warning("cannot count the cluster's instances for the run's usage: %s: %s", type(exc).__name__, exc)
            return run
        run = run.copy()
        run.usage = usage_module.with_instances(run.usage, instances, int(time.time()))
        return run

    def deletion_status(self, run: Run) -> Run:
        return self._after_deletion(
            self._with_cluster(run, self.wiring.backend.deletion_status(run.cluster.to_dict())))

    def _after_deletion(self, run: Run) -> Run:
        """Once the cluster is gone, its key goes too (only a key made for this run), and the
        run's usage says how long the cluster lived."""
        cluster = run.cluster
        if cluster.status in (ClusterStatus.DELETED, ClusterStatus.RELEASED):
            run = _lived(run)
        if cluster.status == ClusterStatus.DELETED and (cluster.key or {}).get("owned"):
            self.wiring.keys.delete(run.execution)
            return self._with_cluster(run, {**cluster.to_dict(), "key": {**cluster.key, "deleted": True}})
        return run

    def release_before_delete(self, execution: str, cluster: dict) -> dict | None:
        """Before an aborted run's cluster is deleted: have the Release Head Node function (in
        the VPC, where the head node is reachable; this function is not) cancel the run's jobs,
        keep their results and remove the folder. Best effort, bounded by RELEASE_WAIT_SECONDS:
        whatever it says, the cluster is deleted next. Its answer, or None (no head node yet)."""
        w = self.wiring
        # (a listing shows a finished create as CREATING: only status() reads its head node)
        if cluster.get("status") not in ("READY", "CREATING") or not w.settings.release_function:
            return None
        ready = w.backend.status(cluster)
        if ready.get("status") != "READY":
            return None
        if w.settings.ssh_key_name:
            ready["key"] = {"secret_arn": w.settings.ssh_key_secret_id}
        else:
            ready["key"] = {"secret_arn": w.keys.names(execution)[1]}
        try:
            answer = w.release_function.invoke(
                FunctionName=w.settings.release_function, InvocationType="RequestResponse",
                Payload=json.dumps({"action": "release_aborted", "execution": execution, "cluster": ready}))
            body = json.loads(answer["Payload"].read() or b"null")
        except Exception as exc:  # noqa: BLE001 - the deletion must happen whatever this says
            log.warning("could not keep the results on %s before deleting it: %s: %s",
                        cluster.get("name"), type(exc).__name__, exc)
            return {"cluster": cluster.get("name"), "error": f"{type(exc).__name__}: {exc}"}
        if answer.get("FunctionError"):
            log.warning("keeping the results on %s failed: %s", cluster.get("name"), body)
            return {"cluster": cluster.get("name"), "error": (body or {}).get("errorMessage")}
        return {"cluster": cluster.get("name"), **(body or {})}

    def delete_tagged(self, execution_arn: str, clusters: list[dict] | None = None) -> list[dict]:
        """Delete every cluster tagged with this execution (`clusters`, when already found), and
        the run's key (idempotent)."""
        w = self.wiring
        deleted = []
        for cluster in w.backend.find_clusters(execution_arn) if clusters is None else clusters:
            result = w.backend.delete(cluster)
            deleted.append({"name": cluster.get("name"), "status": result["status"]})
        w.keys.delete(execution_arn.rsplit(":", 1)[-1])
        return deleted

    @staticmethod
    def _with_cluster(run: Run, cluster: dict) -> Run:
        run = run.copy()
        run.cluster = ClusterRecord.from_dict(cluster)
        return run
