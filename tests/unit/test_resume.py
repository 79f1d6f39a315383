"""Resuming a run (stepcluster resume.py): which jobs an earlier run's manifest spares, and the
references that are refused before anything is created."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from stepcluster import resume
from stepcluster.errors import InputError
from stepcluster.lifecycle import parse_run_input
from stepcluster.record import JobState

DIAMOND = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
DIGESTS = {n: f"digest-{n}" for n in DIAMOND}
ARN = "arn:aws:states:us-east-1:123456789012:execution:Jobs-1:run-1"


def manifest(**states):
    return {"execution": "run-1", "execution_arn": ARN, "jobs": {
        name: {"state": state, "job_id": f"id-{name}", "exit_code": 0 if state == "SUCCEEDED" else 3,
               "started": "2026-12-06T00:00:00Z", "ended": "2026-12-06T00:01:00Z", "digest": DIGESTS[name]}
        for name, state in states.items()}}


def test_the_jobs_that_succeeded_with_the_same_work_are_not_run_again():
    earlier = manifest(a="SUCCEEDED", b="SUCCEEDED", c="SUCCEEDED", d="FAILED")
    skipped = resume.skipped_jobs(earlier, DIGESTS, DIAMOND)
    assert sorted(skipped) == ["a", "b", "c"]
    a = skipped["a"]
    assert (a.state, a.job_id, a.resumed_from, a.kept, a.started) == (
        JobState.SUCCEEDED, "id-a", "run-1", True, "2026-12-06T00:00:00Z")


def test_a_changed_job_runs_again_and_so_does_every_job_that_waits_for_it():
    earlier = manifest(a="SUCCEEDED", b="SUCCEEDED", c="SUCCEEDED", d="SUCCEEDED")
    assert sorted(resume.skipped_jobs(earlier, {**DIGESTS, "b": "changed"}, DIAMOND)) == ["a", "c"]
    assert sorted(resume.skipped_jobs(earlier, {**DIGESTS, "a": "changed"}, DIAMOND)) == []
    # a job the earlier run did not finish runs again with its dependents, even if they ran
    earlier = manifest(a="SUCCEEDED", b="CANCELLED", c="SUCCEEDED", d="SUCCEEDED")
    assert sorted(resume.skipped_jobs(earlier, DIGESTS, DIAMOND)) == ["a", "c"]
    # a manifest written before digests were kept: nothing is skipped (never a guess)
    for entry in earlier["jobs"].values():
        entry.pop("digest")
    assert resume.skipped_jobs(earlier, DIGESTS, DIAMOND) == {}


def test_an_s3_job_whose_objects_changed_runs_again_and_so_does_every_job_that_waits_for_it():
    earlier = manifest(a="SUCCEEDED", b="SUCCEEDED", c="SUCCEEDED", d="FAILED")
    earlier["jobs"]["a"]["source_version"] = "objects-1"
    earlier["jobs"]["b"]["source_version"] = "objects-1"
    same = resume.skipped_jobs(earlier, DIGESTS, DIAMOND, {"a": "objects-1", "b": "objects-1"})
    assert sorted(same) == ["a", "b", "c"] and same["a"].source_version == "objects-1"
    assert sorted(resume.skipped_jobs(earlier, DIGESTS, DIAMOND, {"a": "objects-1", "b": "objects-2"})) == ["a", "c"]
    assert resume.skipped_jobs(earlier, DIGESTS, DIAMOND, {"a": "objects-2", "b": "objects-1"}) == {}
    # objects that cannot be read now, or a manifest that did not record them: never a guess
    assert sorted(resume.skipped_jobs(earlier, DIGESTS, DIAMOND, {"a": "objects-1", "b": None})) == ["a", "c"]
    assert sorted(resume.skipped_jobs(earlier, DIGESTS, DIAMOND, {"a": "objects-1", "c": "objects-1"})) == ["a", "b"]
    assert resume.objects_changed(earlier, {"a": "objects-1", "b": "objects-2", "c": "x"}) == ["b", "c"]
    assert resume.finished_unchanged(earlier, {**DIGESTS, "b": "changed"}) == ["a", "c"]


def test_a_job_resumed_twice_points_at_the_run_that_made_its_results():
    earlier = manifest(a="SUCCEEDED", b="FAILED", c="FAILED", d="NOT_STARTED")
    earlier["jobs"]["a"]["resumed_from"] = "run-0"
    assert resume.skipped_jobs(earlier, DIGESTS, DIAMOND)["a"].resumed_from == "run-0"


@pytest.fixture
def bucket(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="artifacts")
        s3.put_object(Bucket="artifacts", Key="run-1/manifest.json", Body=json.dumps(manifest(a="SUCCEEDED")))
        yield s3


def test_an_execution_of_this_state_machine_is_found_by_name_or_arn(bucket):
    new = "arn:aws:states:us-east-1:123456789012:execution:Jobs-1:run-2"
    assert resume.earlier_manifest(bucket, "artifacts", "run-1", new)["execution"] == "run-1"
    assert resume.earlier_manifest(bucket, "artifacts", ARN, new)["execution"] == "run-1"


@pytest.mark.parametrize("reference, new, says", [
    ("run-9", None, "this stack has no execution 'run-9' (no s3://artifacts/run-9/manifest.json"),
    ("arn:aws:states:us-east-1:123456789012:execution:Other:run-1", None,
     "is not the execution whose results are in s3://artifacts/run-1/"),
    ("run-1", "arn:aws:states:us-east-1:123456789012:execution:Other:run-2",
     "belongs to another state machine than this one (arn:aws:states:us-east-1:123456789012:stateMachine:Other)"),
    ("arn:aws:states:us-east-1:123456789012:stateMachine:Jobs-1", None, "is not an execution ARN"),
    ("a/b", None, "'a/b' is not an execution name"),
    ("", None, "resume must be an earlier execution's name or ARN"),
])
def test_a_reference_to_no_execution_of_this_stack_is_refused_saying_why(bucket, reference, new, says):
    with pytest.raises(InputError, match=None) as info:
        resume.earlier_manifest(bucket, "artifacts", reference, new)
    assert says in str(info.value)


def test_the_execution_input_takes_resume():
    assert parse_run_input({"cluster_name": "c2", "resume": "run-1"}).resume == "run-1"
    with pytest.raises(InputError, match="resume must be an earlier execution's name or ARN, got 7"):
        parse_run_input({"cluster_name": "c2", "resume": 7})


@pytest.mark.parametrize("hours", [0, -1, 8761, "6", True, None])
def test_a_budget_is_a_number_of_hours(hours):
    if hours is None:
        assert parse_run_input({"cluster_name": "c"}).max_hours is None
        return
    with pytest.raises(InputError, match="max_hours must be a number of hours above 0 and at most 8760"):
        parse_run_input({"cluster_name": "c", "max_hours": hours})
    assert parse_run_input({"cluster_name": "c", "max_hours": 0.5}).max_hours == 0.5
