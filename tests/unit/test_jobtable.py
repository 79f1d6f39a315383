"""A wide run's job table in (moto's) S3: what is read and written, what a retried task sees,
what is deleted, and the record staying the same size however many jobs there are."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from stepcluster import jobtable
from stepcluster.errors import InputError
from stepcluster.jobtable import JobTable, new_table
from stepcluster.record import JobRecord, JobState, Run

BUCKET = "artifacts"


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


class Counting:
    """The S3 client, counting the requests made through it."""

    def __init__(self, s3):
        self.s3, self.calls = s3, []
        self.exceptions = s3.exceptions

    def __getattr__(self, name):
        def call(**kwargs):
            self.calls.append((name, kwargs.get("Key")))
            return getattr(self.s3, name)(**kwargs)
        return call


def names(n):
    return [f"j{i:05d}" for i in range(n)]


def wide_run(n):
    return Run("exec-1", order="parallel", jobs_table=new_table(n))


def task(s3, run, n, change):
    """One task on the run: load, change some jobs, store; the record it returns."""
    table = JobTable(s3, BUCKET, names(n))
    loaded = table.load(run)
    change(loaded.jobs)
    return table.store(loaded, run)


def keys(s3):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_load_gives_every_job_of_the_plan_in_its_order_not_started_until_stored(s3):
    run = JobTable(s3, BUCKET, ["c", "a", "b"]).load(Run("exec-1", order="parallel", jobs_table=new_table(3)))
    assert list(run.jobs) == ["c", "a", "b"] and all(j == JobRecord() for j in run.jobs.values())


def test_a_task_writes_only_the_shards_whose_jobs_changed(s3):
    n = 2 * jobtable.SHARD_JOBS + 5
    counting = Counting(s3)

    def submit_all(jobs):
        for i, name in enumerate(jobs):
            jobs[name] = JobRecord(state=JobState.PENDING, job_id=str(i))
    run = task(counting, wide_run(n), n, submit_all)
    assert [c[0] for c in counting.calls].count("put_object") == 3
    assert run.jobs_table["counts"] == {"PENDING": n}
    counting.calls.clear()

    def one_ends(jobs):
        jobs["j01500"] = jobs["j01500"].but(state=JobState.SUCCEEDED, exit_code=0)
    run = task(counting, run, n, one_ends)
    puts = [key for name, key in counting.calls if name == "put_object"]
    assert len(puts) == 1 and puts[0].startswith("exec-1/.jobs/1-")          # the second shard only
    assert [name for name, _ in counting.calls].count("get_object") == 3
    assert run.jobs_table["counts"] == {"PENDING": n - 1, "SUCCEEDED": 1}
    counting.calls.clear()
    task(counting, run, n, lambda jobs: None)                                # nothing changed
    assert "put_object" not in [name for name, _ in counting.calls]


def test_a_retried_task_reads_the_records_it_was_given_not_a_failed_attempts(s3):
    n = 10
    run = task(s3, wide_run(n), n, lambda jobs: jobs.update(j00001=JobRecord(state=JobState.PENDING, job_id="1")))
    # a first attempt stores (a job ended) and then dies: its record is never passed on
    task(s3, run, n, lambda jobs: jobs.update(j00001=JobRecord(state=JobState.FAILED, job_id="1", exit_code=9)))
    retried = JobTable(s3, BUCKET, names(n)).load(run)
    assert retried.jobs["j00001"] == JobRecord(state=JobState.PENDING, job_id="1")


def test_each_store_deletes_what_the_one_before_it_replaced_and_nothing_in_use(s3):
    n = 10

    def to(state):
        return lambda jobs: jobs.update(j00003=JobRecord(state=state, job_id="3"))
    first = task(s3, wide_run(n), n, to(JobState.PENDING))
    second = task(s3, first, n, to(JobState.RUNNING))
    assert second.jobs_table["superseded"] == list(first.jobs_table["shards"].values())
    assert len(keys(s3)) == 2            # the first's shard is still named by the record before it
    third = task(s3, second, n, to(JobState.SUCCEEDED))
    assert keys(s3) == sorted([*second.jobs_table["shards"].values(), *third.jobs_table["shards"].values()])
    # and the record a Catch would pass on (the third task's input) can still be read
    assert JobTable(s3, BUCKET, names(n)).load(second).jobs["j00003"].state == JobState.RUNNING


def test_the_record_of_a_wide_run_stays_the_same_size_however_many_jobs_it_has(s3):
    sizes = {}
    for n in (1_000, 10_000):
        def submit_all(jobs):
            for i, name in enumerate(jobs):
                jobs[name] = JobRecord(state=JobState.RUNNING, job_id=str(100000 + i), started="2026-12-06T00:00:00Z")
        run = task(s3, wide_run(n), n, submit_all)
        run.changes = None
        sizes[n] = len(json.dumps(run.to_dict()))
    assert sizes[10_000] - sizes[1_000] < 9 * 60           # a key a shard, not a record a job
    assert sizes[10_000] < 2_000


def test_records_that_are_gone_or_no_bucket_are_named(s3):
    run = task(s3, wide_run(3), 3, lambda jobs: jobs.update(j00000=JobRecord(state=JobState.PENDING, job_id="1")))
    s3.delete_object(Bucket=BUCKET, Key=run.jobs_table["shards"]["0"])
    with pytest.raises(InputError, match=r"s3://artifacts/exec-1/\.jobs/0-.* are gone"):
        JobTable(s3, BUCKET, names(3)).load(run)
    with pytest.raises(InputError, match="STEPCLUSTER_ARTIFACTS_BUCKET"):
        JobTable(s3, None, names(3)).load(run)


def test_a_run_is_wide_when_it_has_more_jobs_than_a_record_carries():
    assert not jobtable.wide(200, 200) and jobtable.wide(201, 200) and jobtable.wide(1, 0)
