"""A run seen from the user's side: its progress read from the execution's history, its report,
and, for a deployed stack, starting a run and reading its results.

One code path: `stepcluster run-local` is this client pointed at the embedded engine (moto's
interpreter, whose history it reads in place), `stepcluster start --follow` the same client on
Step Functions itself; both print the same progress lines and the same report.
"""

from __future__ import annotations

import collections
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from stepcluster import notify
from stepcluster.decisions import iso


@dataclass
class RunReport:
    status: str
    cause: str | None
    error: str | None
    jobs: list[dict]
    counts: dict
    execution_arn: str
    output: dict | None = None
    invocations: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list, repr=False)
    interrupted: bool = False    # stopped by a Ctrl-C (the CLI exits 130)
    cleanup: dict | None = None  # then: what the cluster function's cleanup returned
    durations: dict = field(default_factory=dict, repr=False)  # function: [seconds per call]
    usage: dict | None = None    # what the run used, and its estimate (usage.py)

    def to_dict(self) -> dict:
        report = {"status": self.status, "error": self.error, "cause": self.cause, "jobs": self.jobs,
                  "counts": self.counts, "usage": self.usage, "execution_arn": self.execution_arn}
        if self.cleanup is not None:
            report["cleanup"] = self.cleanup
        return report


def job_rows(run: dict, names, manifest: Callable[[], dict | None], bucket: str) -> list[dict]:
    """A row for every job (`names`, in the plan's order): from the run's last record, or for a
    wide run (whose jobs are not in its record: jobtable.py) from the manifest its release
    wrote (`manifest()` reads it)."""
    results = (run.get("results") or {}).get("prefix")
    jobs = run.get("jobs")
    if jobs is None and run.get("jobs_table") is not None:
        jobs = (manifest() or {}).get("jobs")
    jobs = jobs or {}
    return [job_row(name, jobs.get(name) or {"state": "NOT_STARTED"}, results, bucket) for name in names]


def job_row(name: str, job: dict, results_prefix: str | None, bucket: str) -> dict:
    row = {"name": name, "job_id": job.get("job_id"), "state": job.get("state"),
           "exit_code": job.get("exit_code"), "started": job.get("started"), "ended": job.get("ended"),
           "results": job.get("results") or (f"{results_prefix}{name}/" if results_prefix and job.get("job_id") else None)}
    if job.get("resumed_from"):
        # finished by an earlier execution, whose prefix holds its results
        row["resumed_from"] = job["resumed_from"]
        row["results"] = f"s3://{bucket}/{job['resumed_from']}/{name}/"
    if job.get("attempts"):
        row["attempts"] = len(job["attempts"]) + 1
    return row


class HistoryFollower:
    """Reads an execution's history as it grows; reports its states and its jobs' changes.

    `events_after(arn, seen)`, when given, returns the events after the first `seen` from
    somewhere cheaper than the API (run-local: moto's interpreter in this process), or None."""

    def __init__(self, sfn, arn, progress, events_after=None):
        self.sfn, self.arn, self.progress = sfn, arn, progress
        self.events_after = events_after
        self.events: list[dict] = []
        self.last_run: dict | None = None
        self._job_states: dict[str, tuple] = {}     # job -> (state, attempt) last reported
        self._silent_since: int | None = None
        self._t0 = time.monotonic()
        self.stopped = False     # after a Ctrl-C's StopExecution: only ExecutionAborted ends it

    def update(self) -> None:
        """Report the events added since the last call, reading only those (O(new events))."""
        new = self.events_after(self.arn, len(self.events)) if self.events_after else None
        if new is None:
            new = self._new_events()
        for event in new:
            self._report(event)
        self.events.extend(new)

    def _new_events(self) -> list[dict]:
        """The events after the last one seen, newest page first (reverseOrder): a page that
        reaches a seen event is the last one read. (moto's API ignores the order and returns
        everything: the filter on ids gives the same answer, at its cost.)"""
        last = self.events[-1]["id"] if self.events else 0
        new, token = [], None
        while True:
            page = self.sfn.get_execution_history(executionArn=self.arn, maxResults=1000, reverseOrder=True,
                                                  **({"nextToken": token} if token else {}))
            fresh = [e for e in page["events"] if e["id"] > last]
            new += fresh
            token = page.get("nextToken")
            if not token or len(fresh) < len(page["events"]):
                return sorted(new, key=lambda e: e["id"])

    def say(self, text: str) -> None:
        self.progress(f"[{time.monotonic() - self._t0:6.1f}s] {text}")

    def _report_changes(self, run: dict) -> None:
        """The jobs the state's task changed (the record lists the first few of them, and how
        many more: a wide run's jobs are not in the record at all); a state that passes the
        record on repeats them, and is not reported twice."""
        def seen(change):
            return change.get("state"), change.get("attempt")
        fresh = [c for c in run.get("changes") or []
                 if self._job_states.get(c.get("job"), ("NOT_STARTED", None)) != seen(c)]
        for change in fresh:
            self._job_states[change["job"]] = seen(change)
            detail = f" (job {change['job_id']})" if change.get("job_id") else ""
            if change.get("exit_code") is not None:
                detail += f", exit code {change['exit_code']}"
            if change.get("attempt"):
                detail += f", attempt {change['attempt']}"
            if change.get("resumed_from"):
                detail += f", finished by {change['resumed_from']}"
            self.say(f"  job {change['job']}: {change['state']}{detail}")
        if fresh and run.get("changes_more"):
            counts = (run.get("jobs_table") or {}).get("counts") or collections.Counter(
                job.get("state", "NOT_STARTED") for job in (run.get("jobs") or {}).values())
            self.say(f"  ... and {run['changes_more']} more jobs changed; now "
                     + ", ".join(f"{n} {state}" for state, n in counts.items()))

    def _report(self, event: dict) -> None:
        kind = event["type"]
        if kind.endswith("StateEntered"):
            name = event["stateEnteredEventDetails"]["name"]
            if name not in ("Wait For Jobs", "Poll Jobs", "Are Jobs Done?"):
                self.say(name)
        elif kind.endswith("StateExited"):
            try:
                state = json.loads(event["stateExitedEventDetails"].get("output") or "{}")
            except ValueError:
                return
            run = state.get("run") if isinstance(state, dict) else None
            if isinstance(run, dict) and ("jobs" in run or "jobs_table" in run):
                self.last_run = run
                silent = run.get("scheduler_silent_since")
                if silent != self._silent_since:
                    self._silent_since = silent
                    self.say(f"  the scheduler does not answer ({run.get('scheduler_said')}): "
                              "waiting for it, the jobs go on" if silent is not None
                              else "  the scheduler answers again")
                self._report_changes(run)
        elif self.stopped and kind in ("ExecutionFailed", "ExecutionSucceeded"):
            return           # moto ending a stopped execution as its last Lambda call ended
        elif kind == "ExecutionFailed":
            details = event.get("executionFailedEventDetails", {})
            self.say(f"execution FAILED: {details.get('error')}: {details.get('cause')}")
        elif kind == "ExecutionSucceeded":
            self.say("execution SUCCEEDED")


def execution_input(cluster_name: str, *, keep_cluster: bool = False, resume: str | None = None,
                    max_hours: float | None = None) -> dict:
    """What Start Execution is given: the documented input, only the keys asked for."""
    value: dict = {"cluster_name": cluster_name}
    if keep_cluster:
        value["keep_cluster"] = True
    if resume:
        value["resume"] = resume
    if max_hours is not None:
        value["max_hours"] = max_hours
    return value


def history_counts(events: list[dict]) -> dict:
    """What Step Functions bills and limits an execution by, from its history."""
    return {"history_events": len(events),
            "state_transitions": sum(1 for e in events if e["type"].endswith("StateEntered")),
            "lambda_invocations": sum(1 for e in events if e["type"] == "LambdaFunctionScheduled")}


class Runs:
    """One stack's runs: its state machine and its artifacts bucket, through the AWS APIs
    (run-local gives it the embedded engine's clients)."""

    def __init__(self, sfn, s3, state_machine_arn: str, bucket: str):
        self.sfn, self.s3, self.state_machine_arn, self.bucket = sfn, s3, state_machine_arn, bucket

    @classmethod
    def of_stack(cls, stack: str, region: str | None = None) -> "Runs":
        """The stack's state machine and bucket, from its outputs (StateMachineArn,
        ArtifactsBucketName); InputError when there is no such stack or it has not them."""
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        from stepcluster.errors import InputError

        try:
            stacks = boto3.client("cloudformation", region_name=region).describe_stacks(StackName=stack)["Stacks"]
        except (ClientError, BotoCoreError) as exc:
            raise InputError(f"cannot read stack {stack!r}: {exc}") from None
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs") or []}
        missing = [k for k in ("StateMachineArn", "ArtifactsBucketName") if k not in outputs]
        if missing:
            raise InputError(f"stack {stack!r} has no output {', '.join(missing)}: is it a stepcluster stack, "
                             f"deployed ({stacks[0].get('StackStatus')})?")
        region = outputs["StateMachineArn"].split(":")[3]
        return cls(boto3.client("stepfunctions", region_name=region), boto3.client("s3", region_name=region),
                   outputs["StateMachineArn"], outputs["ArtifactsBucketName"])

    # -- a run -------------------------------------------------------------------------------
    def start(self, value: dict, name: str | None = None) -> str:
        """Start an execution with this input (named `name`, or run-TIME-RANDOM: a name says
        when it ran in a listing, and the results' prefix is it); its ARN."""
        name = name or f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
        return self.sfn.start_execution(stateMachineArn=self.state_machine_arn, input=json.dumps(value),
                                        name=name)["executionArn"]

    console_url = staticmethod(notify.console_url)

    def follower(self, execution_arn: str, progress, events_after=None) -> HistoryFollower:
        return HistoryFollower(self.sfn, execution_arn, progress, events_after=events_after)

    def follow(self, follower: HistoryFollower, *, every: float = 2.0, wait=time.sleep, on_tick=None) -> dict:
        """Print the execution's progress until it ends; its DescribeExecution. `on_tick()`
        runs before each look (run-local: Ctrl-C and its timeout)."""
        while True:
            if on_tick:
                on_tick()
            described = self.sfn.describe_execution(executionArn=follower.arn)
            follower.update()
            if described["status"] != "RUNNING":
                return described
            wait(every)

    def report(self, described: dict, follower: HistoryFollower, names) -> RunReport:
        """The run's report: status, cause, each job, the counts (from its history), what it
        used (its record's, its manifest's, the history's transitions) and cost."""
        from stepcluster import usage

        follower.update()
        arn = described["executionArn"]
        output = json.loads(described["output"]) if described.get("output") else None
        run = output or follower.last_run or {}
        execution = arn.rsplit(":", 1)[-1]
        manifest = self.manifest(execution)
        jobs = job_rows(run, names, lambda: manifest, self.bucket)
        counts = history_counts(follower.events)
        used = {**((manifest or {}).get("usage") or {}), **(run.get("usage") or {}),
                "state_transitions": counts["state_transitions"]}
        used["estimate"] = usage.estimate(used, used.get("prices"), state_transitions=counts["state_transitions"])
        return RunReport(described["status"], described.get("cause"), described.get("error"), jobs,
                         counts, arn, output, events=follower.events, usage=used)

    # -- what a run kept ---------------------------------------------------------------------
    def manifest(self, execution: str) -> dict | None:
        """The execution's manifest (None: it kept nothing yet)."""
        try:
            return json.loads(self.s3.get_object(Bucket=self.bucket, Key=f"{_name(execution)}/manifest.json")["Body"].read())
        except self.s3.exceptions.NoSuchKey:
            return None

    def status(self, execution: str) -> dict:
        """An execution's status, times and, from its manifest, its jobs by state."""
        described = self.sfn.describe_execution(executionArn=self._arn(execution))
        manifest = self.manifest(execution) or {}
        states = collections.Counter(j.get("state") for j in (manifest.get("jobs") or {}).values())
        return {"execution": described["name"], "status": described["status"],
                "started": _iso(described.get("startDate")), "stopped": _iso(described.get("stopDate")),
                "error": described.get("error"), "cause": described.get("cause"),
                "jobs": dict(states), "results": f"s3://{self.bucket}/{described['name']}/"}

    def executions(self, limit: int = 20) -> list[dict]:
        """The most recent executions: status, start, duration, failed jobs (their manifests)."""
        listed = self.sfn.list_executions(stateMachineArn=self.state_machine_arn, maxResults=limit)["executions"]
        rows = []
        for e in listed[:limit]:
            manifest = self.manifest(e["name"]) or {}
            jobs = (manifest.get("jobs") or {}).values()
            stop = e.get("stopDate")
            rows.append({"execution": e["name"], "status": e["status"], "started": _iso(e.get("startDate")),
                         "seconds": round((stop - e["startDate"]).total_seconds()) if stop else None,
                         "jobs": len(manifest.get("jobs") or {}),
                         "failed": sum(1 for j in jobs if j.get("state") in ("FAILED", "CANCELLED"))})
        return rows

    def results(self, execution: str, folder, job: str | None = None) -> list[str]:
        """Download what the execution kept (one job's, or all) into FOLDER/<job>/...; a resumed
        job's files come from the run that made them. The keys written, relative to FOLDER."""
        from pathlib import Path

        from stepcluster.errors import InputError

        name = _name(execution)
        manifest = self.manifest(name)
        if manifest is None:
            raise InputError(f"execution {name!r} kept nothing in s3://{self.bucket}/{name}/")
        jobs = manifest.get("jobs") or {}
        if job is not None and job not in jobs:
            raise InputError(f"execution {name!r} has no job {job!r}: its jobs are {', '.join(jobs)}")
        written = []
        for each in [job] if job else list(jobs):
            source = jobs[each].get("resumed_from") or name
            prefix = f"{source}/{each}/"
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    relative = f"{each}/{obj['Key'][len(prefix):]}"
                    target = Path(folder) / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self.s3.download_file(self.bucket, obj["Key"], str(target))
                    written.append(relative)
        return written

    def log(self, execution: str, job: str, *, stderr: bool = False, task: str | None = None) -> bytes:
        """A job's stdout (or stderr; of one task of an array) as the run kept it."""
        from stepcluster.errors import InputError

        name = _name(execution)
        entry = ((self.manifest(name) or {}).get("jobs") or {}).get(job) or {}
        source = entry.get("resumed_from") or name
        key = f"{source}/{job}/" + (f"{task}/" if task else "") + ("stderr" if stderr else "stdout")
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            raise InputError(f"no s3://{self.bucket}/{key}: the job did not start, or its results were "
                             "not kept") from None

    def _arn(self, execution: str) -> str:
        if execution.startswith("arn:"):
            return execution
        head, _, machine = self.state_machine_arn.partition(":stateMachine:")
        return f"{head}:execution:{machine}:{execution}"


def _name(execution: str) -> str:
    return execution.rsplit(":", 1)[-1]


def _iso(when) -> str | None:
    return iso(int(when.timestamp())) if when is not None else None
