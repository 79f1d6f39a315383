"""A wide run's per-job records, kept in the artifacts bucket instead of the run record.

Step Functions passes at most 256 KiB between states, and a job's record is about 200 bytes:
a run of a few thousand jobs cannot carry them all in `$.run`. So a run with more jobs than
`Settings.jobs_in_record` keeps them here, and its record carries only what the states need:
`jobs_table` (where the records are, and how many jobs are in each state) instead of `jobs`.
The functions that work on the jobs (Submit, Poll, Cancel, Release) load the table before
their task and store it after; the others pass the reference on untouched.

Layout: the jobs in plan order, SHARD_JOBS to an object,
s3://BUCKET/EXECUTION/.jobs/SHARD-TOKEN.json ({name: record}, jobs never submitted left out).
Reading and writing are incremental: a task writes only the shards whose records changed, each
to a new key, and the record names the key of every shard. So a task Step Functions retries, or
whose Catch passes its input on, reads the shards its input names, never a half-done attempt's.
Each store also deletes the shards the previous store replaced (`superseded`): by then nothing
in flight names them (a record that did has been replaced by the one this task was given).
Job names are [A-Za-z0-9_-], so `.jobs/` is never a job's results folder.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from stepcluster import logs
from stepcluster.errors import InputError
from stepcluster.record import JobRecord, Run

log = logs.logger(__name__)

#: Jobs to an object: 1,000 records are about 200 KB, one request to read or write.
SHARD_JOBS = 1000
#: Requests in flight when a table is read or written.
TABLE_WORKERS = 8
FOLDER = ".jobs"


def wide(job_count: int, jobs_in_record: int) -> bool:
    """Whether a run of this many jobs keeps them in a table (decided once, at Create Cluster)."""
    return job_count > jobs_in_record


def new_table(job_count: int) -> dict:
    """The reference a wide run starts with: no shard written, every job not started."""
    return {"shards": {}, "counts": {"NOT_STARTED": job_count}}


class JobTable:
    """Loads a wide run's jobs into `run.jobs` and stores them back (one instance a task)."""

    def __init__(self, s3, bucket: str | None, names: Sequence[str]):
        self.s3, self.bucket, self.names = s3, bucket, list(names)
        self._loaded: dict[str, str] = {}     # shard -> its JSON as read (unchanged: not written)

    def _shard_of(self) -> dict[str, str]:
        return {name: str(i // SHARD_JOBS) for i, name in enumerate(self.names)}

    def load(self, run: Run) -> Run:
        """The run with every job of the plan in `jobs`, in plan order, from the shards its
        record names (a job no shard holds has not been submitted)."""
        if not self.bucket:
            raise InputError("this run keeps its jobs in the artifacts bucket, and none is set "
                             "(STEPCLUSTER_ARTIFACTS_BUCKET)")
        shards = dict((run.jobs_table or {}).get("shards") or {})
        texts = dict(zip(shards, self._map(self._get, shards.values())))
        self._loaded = texts
        stored: dict[str, JobRecord] = {}
        for shard, text in texts.items():
            for name, job in json.loads(text).items():
                stored[name] = JobRecord.from_dict(job, name)
        run = run.copy()
        run.jobs = {name: stored.get(name) or JobRecord() for name in self.names}
        return run

    def store(self, run: Run, given: Run) -> Run:
        """The run with its jobs written back (the shards that changed since `load`) and its
        record's `jobs_table` naming them; `given` is the record the task was given."""
        before = dict((given.jobs_table or {}).get("shards") or {})
        by_shard: dict[str, dict] = {}
        for name, shard in self._shard_of().items():
            job = run.jobs.get(name)
            if job is not None and job != JobRecord():
                by_shard.setdefault(shard, {})[name] = job.to_dict()
        texts = {shard: json.dumps(jobs, separators=(",", ":")) for shard, jobs in by_shard.items()}
        changed = {shard: text for shard, text in texts.items() if self._loaded.get(shard) != text}
        keys = {shard: f"{run.execution}/{FOLDER}/{shard}-{uuid.uuid4().hex[:12]}.json" for shard in changed}
        list(self._map(lambda shard: self._put(keys[shard], changed[shard]), changed))
        shards = {**{s: k for s, k in before.items() if s in texts}, **keys}
        replaced = sorted(k for s, k in before.items() if s in changed or s not in texts)
        self._delete((given.jobs_table or {}).get("superseded") or [])
        run = run.copy()
        run.jobs_table = {"shards": dict(sorted(shards.items(), key=lambda kv: int(kv[0]))),
                          "counts": run.job_counts(), **({"superseded": replaced} if replaced else {})}
        return run

    # -- S3 --------------------------------------------------------------------------------
    def _map(self, work, items):
        items = list(items)
        if len(items) <= 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(min(TABLE_WORKERS, len(items))) as pool:
            return list(pool.map(work, items))

    def _get(self, key: str) -> str:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read().decode()
        except self.s3.exceptions.NoSuchKey:
            raise InputError(f"the run's job records s3://{self.bucket}/{key} are gone (was the "
                             "artifacts bucket emptied during the run?)") from None

    def _put(self, key: str, text: str) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=text.encode(), ContentType="application/json")

    def _delete(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            self.s3.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": k} for k in keys], "Quiet": True})
        except Exception as exc:  # noqa: BLE001 - a stale shard costs storage, not correctness
            log.warning("could not delete superseded job records %s: %s", keys, exc)
