"""The run's use cases, one per state machine task: each takes the run record and returns it.

`RunService` is what the Lambda handlers call. It puts together the two kinds of work a run
does, which live apart:

- the cluster's lifecycle (`lifecycle.ClusterLifecycle`: create, status, delete, deletion
  status; AWS APIs and the cluster tools, no SSH);
- the head node's work (`headnode.HeadNodeWork`: prepare, submit, poll, cancel, release; SSH
  only), whose decisions (what a round's observations mean, what comes next) are the pure
  functions of `decisions`;

and the abort cleanup and periodic sweep, which need both. The record they pass is
`record.Run` (its JSON shape: record.py).
"""

from __future__ import annotations

import sys
import time

from stepcluster import logs, usage
from stepcluster.clusters.base import EXECUTION_TAG
from stepcluster.errors import ClusterError, InputError
from stepcluster.executions import ENDED, execution_prefix
from stepcluster.headnode import HeadNodeWork
from stepcluster.jobtable import JobTable
from stepcluster.lifecycle import ClusterLifecycle
from stepcluster.record import Run
from stepcluster.wiring import Wiring

log = logs.logger(__name__)

#: The tasks a handler may call with a run record, and which part does each.
RUN_TASKS = {
    "create_cluster": "lifecycle", "cluster_status": "lifecycle",
    "delete_cluster": "lifecycle", "deletion_status": "lifecycle",
    "prepare_head_node": "head_node", "submit_jobs": "head_node", "poll_jobs": "head_node",
    "cancel_jobs": "head_node", "release_head_node": "head_node",
}


def _ssh_connections() -> int:
    """SSH connections this process opened so far (0 where paramiko was never imported: the
    cluster functions)."""
    ssh = sys.modules.get("stepcluster.remote.ssh")
    return ssh.connections_opened if ssh else 0


class RunService:
    def __init__(self, settings, **parts):
        self.wiring = Wiring(settings, **parts)
        self.lifecycle = ClusterLifecycle(self.wiring)
        self.head_node = HeadNodeWork(self.wiring)

    @property
    def settings(self):
        return self.wiring.settings

    @property
    def plan(self):
        return self.wiring.plan

    def task(self, name: str, run: Run, *, memory_mb: int | None = None) -> Run:
        """Run one state's task on the record; the record it returns says which jobs the task
        changed, and what the run has used (this task's Lambda call at `memory_mb`, its SSH
        connections: usage.py). A wide run's jobs are loaded for the head node's tasks and
        stored after them (jobtable.py); the cluster's tasks pass its table on as it is."""
        if name not in RUN_TASKS:
            raise InputError(f"no task {name!r}: the tasks are {', '.join(RUN_TASKS)}")
        began, connections = time.monotonic(), _ssh_connections()
        part = RUN_TASKS[name]
        table = None
        if part == "head_node" and run.jobs_table is not None:
            table = JobTable(self.wiring.s3, self.settings.artifacts_bucket, self.plan.names)
            given, run = run, table.load(run)
        done = getattr(getattr(self, part), name)(run).with_changes_since(run)
        if table is not None:
            done = table.store(done, given)
        done.usage = usage.add_task(done.usage, seconds=time.monotonic() - began, memory_mb=memory_mb,
                                    ssh_connections=_ssh_connections() - connections)
        return done

    def cleanup_execution(self, execution_arn: str) -> dict:
        """After an abort or timeout (the EventBridge rule, and the sweep below): keep the
        results of the execution's jobs and cancel them, then delete what is tagged with it.
        Idempotent."""
        execution = execution_arn.rsplit(":", 1)[-1]
        if not self.wiring.backend.creates_clusters:
            # An existing head node stays; the run's jobs and folder on it do not.
            return {"execution": execution_arn, "clusters": [],
                    "released": self.head_node.release_found(execution)}
        clusters = self.wiring.backend.find_clusters(execution_arn)
        released = [self.lifecycle.release_before_delete(execution, cluster) for cluster in clusters]
        return {"execution": execution_arn, "released": [r for r in released if r],
                "clusters": self.lifecycle.delete_tagged(execution_arn, clusters)}

    def release_aborted(self, execution: str, cluster: dict) -> dict:
        """The Release Head Node function's part of that cleanup, for a created cluster (it runs
        where the head node is reachable: in the VPC)."""
        return self.head_node.release_found(execution, cluster)

    def sweep(self, state_machine_arn: str) -> dict:
        """The second sweep, every CleanupSweepMinutes (template: ClusterSweepSchedule).

        The EventBridge cleanup runs once, when the execution ends, and EventBridge delivers it
        best effort; a create that was still in its cluster tool call then may make the stack
        after that cleanup looked (its own post-create check deletes it, unless the function
        died first). So this looks again, at what is still there: stacks, run key pairs and run
        secrets tagged with an execution of this state machine. For each such execution that
        ended ABORTED, TIMED_OUT or FAILED (or that Step Functions no longer knows: closed more
        than 90 days ago), cleanup_execution deletes it all, with the backend's own ownership
        check. RUNNING executions are never touched, nor SUCCEEDED ones (keep_cluster), nor
        anything untagged or tagged by another state machine.

        Finding nothing costs three list calls (CloudFormation, EC2, Secrets Manager) and never
        builds the backend: the ParallelCluster function imports pcluster.lib only when there
        is something to delete.
        """
        prefix = execution_prefix(state_machine_arn)
        result = {"state_machine": state_machine_arn, "swept": [], "kept": []}
        if self.wiring.settings.backend == "existing":     # nothing is created, so nothing to sweep
            return result
        tagged = self._tagged_stack_executions(prefix) | self.wiring.keys.tagged_executions(prefix)
        errors = []
        for arn in sorted(tagged):
            try:
                status = self.wiring.executions.status(arn)
                if status is not None and status not in ENDED:
                    result["kept"].append({"execution": arn, "status": status})
                    continue
                log.info("sweep: execution %s is %s: deleting what carries its tag", arn, status or "gone")
                result["swept"].append({**self.cleanup_execution(arn), "status": status or "GONE"})
            except Exception as exc:  # noqa: BLE001 - one execution's failure must not stop the rest
                log.exception("sweep: cleaning up after %s failed", arn)
                errors.append(f"{arn}: {type(exc).__name__}: {exc}")
        if errors:
            # A function error: visible in the function's Errors metric; the next sweep tries again.
            raise ClusterError("the sweep could not clean up after " + "; ".join(errors)[:2000])
        return result

    def _tagged_stack_executions(self, prefix: str) -> set[str]:
        """Execution ARNs starting with `prefix` on live top-level stacks (one DescribeStacks
        listing: no cluster tool). Stacks already being deleted are left to finish."""
        found = set()
        for page in self.wiring.cfn.get_paginator("describe_stacks").paginate():
            for stack in page.get("Stacks") or []:
                if stack.get("ParentId") or stack.get("StackStatus") in ("DELETE_COMPLETE", "DELETE_IN_PROGRESS"):
                    continue
                value = next((t.get("Value") or "" for t in stack.get("Tags") or []
                              if t.get("Key") == EXECUTION_TAG), "")
                if value.startswith(prefix):
                    found.add(value)
        return found
