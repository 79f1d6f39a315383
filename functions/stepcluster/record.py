"""The run record: what one execution knows about its cluster and its jobs, between states.

It travels as `$.run` in the state machine, so its JSON shape is a contract with
`statemachine/definition.asl.json` (which reads `phase`, `wait_seconds`, `failure`,
`cluster.status`, `cluster.reason`, `cluster.poll_seconds` and `cluster_name`) and with what a
user reads in the console and in the execution's output:

    {"execution": ..., "execution_arn": ..., "cluster_name": ..., "keep_cluster": false,
     "plan_digest": ..., "order": "sequential",
     "cluster": {"status": "READY", "head_node": {...}, "run_dir": ..., ...},
     "jobs": {"NAME": {"state": "SUCCEEDED", "job_id": "12", "exit_code": 0, ...}},
     "next": 1, "phase": "RUNNING", "wait_seconds": 10, "polls": 3,
     "failure": {"Error": ..., "Cause": ...}, "results": {...}}

Typed here with dataclasses (no dependency the ParallelCluster function's layer would need:
it runs on another Python with only the standard library and pcluster.lib's own packages).
A handler parses its event once with `Run.from_dict` and returns `Run.to_dict()`. Empty fields
are left out of the JSON: with 1,000 jobs the record must stay far below Step Functions' 256
KiB payload limit, so absent means none.

The cluster part belongs to the cluster backend (each backend keeps what it needs to find and
delete its cluster: a stack name, a key, a head node): `ClusterRecord` types what the run itself
reads and carries the backend's other fields as they are.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields, replace
from typing import Any

from stepcluster.errors import InputError


class JobState(str, enum.Enum):
    """A job as the run sees it (the scheduler's own word is `JobRecord.scheduler_state`)."""

    NOT_STARTED = "NOT_STARTED"  # not submitted (yet, or ever: an earlier job failed)
    PENDING = "PENDING"          # submitted, queued
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"      # its wrapper recorded exit 0
    FAILED = "FAILED"            # non-zero exit, killed, lost, blocked too long, refused
    CANCELLED = "CANCELLED"      # cancelled (by this run's failure path, or by someone else)

    @property
    def active(self) -> bool:
        """Submitted and not ended: the scheduler is asked about it every round."""
        return self in (JobState.PENDING, JobState.RUNNING)

    @property
    def ended(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Phase(str, enum.Enum):
    """Where the run is: the definition's Choice states branch on these words."""

    READY = "READY"          # the cluster is being made or is ready; nothing submitted yet
    RUNNING = "RUNNING"      # jobs in flight: wait, then poll
    WATCHING = "WATCHING"    # jobs in flight, and the round waits for them on the head node:
                             # poll again at once (PollWindowSeconds > 0)
    NEXT = "NEXT"            # sequential: the next job is to be submitted (by Submit Jobs)
    SUCCEEDED = "SUCCEEDED"  # every job succeeded: keep the results, tear down
    FAILED = "FAILED"        # a job failed (`failure` says which and why): cancel, tear down


class ClusterStatus(str, enum.Enum):
    """The words the definition's Choice states read at `$.run.cluster.status`."""

    CREATING = "CREATING"
    READY = "READY"
    FAILED = "FAILED"
    DELETING = "DELETING"
    DELETE_FAILED = "DELETE_FAILED"
    DELETED = "DELETED"
    RELEASED = "RELEASED"    # an existing head node: left as it was found
    KEPT = "KEPT"            # keep_cluster on success


#: The jobs a task changed that its record lists (`Run.changes`): a wide run's Submit Jobs
#: changes every job at once, and the record must stay small.
CHANGES_IN_RECORD = 20


def _compact(values: dict) -> dict:
    return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in values.items() if v is not None}


def _unknown_keys(kind: str, data: dict, known: set[str]) -> None:
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise InputError(f"the run record's {kind} has fields this version does not know: "
                         f"{', '.join(map(str, unknown))} (was it made by another deployment?)")


def _enum(kind, value, where: str):
    try:
        return kind(value)
    except ValueError:
        words = ", ".join(m.value for m in kind)
        raise InputError(f"{where} is {value!r}, not one of {words}") from None


@dataclass
class JobRecord:
    """One job of the run."""

    state: JobState = JobState.NOT_STARTED
    job_id: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    started: str | None = None           # ISO 8601 UTC, from the wrapper's start file
    ended: str | None = None
    scheduler_state: str | None = None   # the scheduler's own word while queued or at the end
    reason: str | None = None            # the scheduler's explanation, or ours
    missing_since: int | None = None     # epoch: first round the scheduler no longer knew it
    missing_polls: int | None = None
    blocked_since: int | None = None     # epoch: first round the scheduler said it cannot start
    results: str | None = None           # s3:// prefix of its kept results (while the payload allows)
    kept: bool | None = None             # its results are in the artifacts bucket (not copied again)
    #: an array job's counts (never per-task detail: that is on the head node, then in the
    #: results): {"total", "started", "ended", "failed"[, "failed_task"]}
    tasks: dict | None = None
    attempt: int | None = None           # its attempt now, from 2 on (retries); None: the first
    #: its earlier attempts, each as it ended: [{"job_id", "state", "exit_code", "signal",
    #: "scheduler_state", "reason", "started", "ended"}] (their files: JOB/attempt-K/)
    attempts: list | None = None
    resumed_from: str | None = None      # succeeded in this earlier execution, not run again
    #: an s3_uri job's objects as its last attempt staged them (staging.source_version): a
    #: resumed run spares the job only while they are the same
    source_version: str | None = None

    @classmethod
    def from_dict(cls, data: Any, name: str = "?") -> JobRecord:
        if not isinstance(data, dict):
            raise InputError(f"job {name!r} of the run record is not an object: {data!r}")
        _unknown_keys(f"job {name!r}", data, _JOB_FIELDS)
        values = dict(data)
        state = _enum(JobState, values.pop("state", "NOT_STARTED"), f"job {name!r}'s state")
        return cls(state, **values)

    def to_dict(self) -> dict:
        return _compact({f: getattr(self, f) for f in _JOB_ORDER})

    def but(self, **changes) -> JobRecord:
        """A copy with these fields changed (None clears one)."""
        return replace(self, **changes)


_JOB_ORDER = tuple(f.name for f in fields(JobRecord))
_JOB_FIELDS = set(_JOB_ORDER)


@dataclass
class ClusterRecord:
    """The cluster as the run reads it; `details` holds the backend's own fields."""

    status: str
    run_dir: str | None = None           # the run's folder on the head node, once prepared
    run_dir_removed: bool | None = None
    head_node: dict | None = None        # host, port, user, host_key, scheduler
    key: dict | None = None              # the run's SSH key: key_name, secret_arn, owned, deleted
    details: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> ClusterRecord:
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise InputError(f"the run record's cluster has no status: {data!r}")
        own = {f: data.get(f) for f in ("status", "run_dir", "run_dir_removed", "head_node", "key")}
        return cls(**own, details={k: v for k, v in data.items() if k not in own})

    def to_dict(self) -> dict:
        """The backend's view: its fields and the ones above, as one flat object."""
        return {**self.details, **_compact({"status": self.status, "head_node": self.head_node,
                                            "key": self.key, "run_dir": self.run_dir,
                                            "run_dir_removed": self.run_dir_removed})}

    @property
    def ready(self) -> bool:
        return self.status == ClusterStatus.READY

    @property
    def scheduler(self) -> str | None:
        return (self.head_node or {}).get("scheduler")

    @property
    def secret_arn(self) -> str | None:
        return (self.key or {}).get("secret_arn")


@dataclass
class Run:
    """The run record. Before Create Cluster only `execution`, `execution_arn`, `plan_digest`
    and the user's `input` are set (by the definition's Start Run state)."""

    execution: str
    execution_arn: str | None = None
    plan_digest: str | None = None
    input: Any = None                    # the execution input as the user gave it: checked by create
    cluster_name: str | None = None
    started_at: int | None = None        # epoch the cluster was asked for (MaxRunMinutes counts from it)
    max_seconds: int | None = None       # the execution's own budget (input max_hours), from started_at
    keep_cluster: bool = False
    order: str | None = None             # "sequential" or "parallel", from the plan
    cluster: ClusterRecord | None = None
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    next: int = 0                        # sequential: index in the plan of the next job to submit
    phase: Phase | None = None
    wait_seconds: int | None = None
    polls: int | None = None
    failure: dict | None = None          # {"Error", "Cause"}: why the run fails
    scheduler_silent_since: int | None = None  # epoch: first round of an ongoing scheduler outage
    scheduler_said: str | None = None    # what its failing status command printed, shortened
    results: dict | None = None          # where the results are kept, what could not be (results.py)
    release_note: str | None = None      # what Release Head Node could not do: results not kept,
                                         # jobs that may still run (the definition adds it to the cause)
    #: a wide run's jobs are in the artifacts bucket, not in `jobs` (jobtable.py): where, and
    #: how many are in each state: {"shards": {SHARD: KEY}, "counts": {STATE: N}[, "superseded"]}
    jobs_table: dict | None = None
    #: {"from": an earlier execution}: its finished jobs are not run again (resume.py); once
    #: Submit Jobs has applied it, also "skipped": how many
    resume: dict | None = None
    #: the jobs whose state the last task changed, for whoever follows the run (the console, a
    #: follower reading the history): [{"job", "state"[, "job_id", "exit_code"]}], the first
    #: CHANGES_IN_RECORD of them, and how many more there were
    changes: list | None = None
    changes_more: int | None = None
    #: what the run used so far (usage.py): Lambda calls and GB-seconds, SSH connections, the
    #: cluster's lifetime once it is gone
    usage: dict | None = None

    @classmethod
    def from_dict(cls, data: Any) -> Run:
        """The record as a state passes it; InputError naming the field that is wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("execution"), str):
            raise InputError(f"not a run record (no execution name): {str(data)[:200]}")
        _unknown_keys("top level", data, _RUN_FIELDS)
        values = dict(data)
        jobs = values.pop("jobs", None) or {}
        if not isinstance(jobs, dict):
            raise InputError(f"the run record's jobs are not an object: {jobs!r}")
        cluster = values.pop("cluster", None)
        phase = values.pop("phase", None)
        if not isinstance(values.get("jobs_table") or {}, dict):
            raise InputError(f"the run record's jobs_table is not an object: {values['jobs_table']!r}")
        run = cls(**values)
        run.jobs = {name: JobRecord.from_dict(job, name) for name, job in jobs.items()}
        run.cluster = ClusterRecord.from_dict(cluster) if cluster is not None else None
        run.phase = _enum(Phase, phase, "the run's phase") if phase is not None else None
        return run

    def to_dict(self) -> dict:
        out = _compact({f: getattr(self, f) for f in _RUN_ORDER})
        if self.cluster is not None:
            out["cluster"] = self.cluster.to_dict()
        if self.order is None:
            # Not created (the record Start Run made, maybe with a cluster "DELETED" by the
            # teardown of a failed create): no jobs to show.
            for name in ("keep_cluster", "next"):
                out.pop(name)
        elif self.jobs_table is None:
            out["jobs"] = {name: job.to_dict() for name, job in self.jobs.items()}
        return out

    def job_counts(self) -> dict[str, int]:
        """How many jobs are in each state (states in JobState's order, none left out)."""
        counts = {state.value: 0 for state in JobState}
        for job in self.jobs.values():
            counts[job.state.value] += 1
        return {state: n for state, n in counts.items() if n}

    def with_changes_since(self, before: Run) -> Run:
        """This record with `changes`: its jobs whose state (or attempt) differs from `before`'s."""
        changed = []
        for name, job in self.jobs.items():
            earlier = before.jobs.get(name) or JobRecord()
            if (earlier.state, earlier.attempt) != (job.state, job.attempt):     # a retry is a change
                entry = {"job": name, "state": job.state.value}
                if job.job_id:
                    entry["job_id"] = job.job_id
                if job.exit_code is not None:
                    entry["exit_code"] = job.exit_code
                if job.attempt:
                    entry["attempt"] = job.attempt
                if job.resumed_from:
                    entry["resumed_from"] = job.resumed_from
                changed.append(entry)
        out = replace(self)
        out.changes = changed[:CHANGES_IN_RECORD] or None
        out.changes_more = len(changed) - CHANGES_IN_RECORD if len(changed) > CHANGES_IN_RECORD else None
        return out

    def copy(self) -> Run:
        """A copy whose jobs can be changed without changing this one's."""
        return replace(self, jobs={n: replace(j) for n, j in self.jobs.items()},
                       cluster=replace(self.cluster) if self.cluster else None)

    def active_jobs(self) -> list[str]:
        return [name for name, job in self.jobs.items() if job.state.active]

    @property
    def run_dir(self) -> str | None:
        return self.cluster.run_dir if self.cluster else None


_RUN_ORDER = tuple(f.name for f in fields(Run) if f.name not in ("cluster", "jobs"))
_RUN_FIELDS = {f.name for f in fields(Run)}
