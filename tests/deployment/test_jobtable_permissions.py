"""The S3 calls of a wide run's job table (stepcluster jobtable.py), recorded at botocore's
boundary under moto, are each allowed by the roles of the functions that load and store it:
Submit Jobs, Poll Jobs, Cancel Jobs and Release Head Node. moto enforces no IAM: without this a
missing permission would show only in AWS, on the first run of more jobs than a record carries."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from cfnlint.decode import cfn_yaml
from moto import mock_aws

from stepcluster.jobtable import JobTable, new_table
from stepcluster.record import JobRecord, JobState, Run

from .iam import role_policy
from .permissions import call_needs, refused
from .recording import Recorder
from .template import STACK

ROOT = Path(__file__).resolve().parents[2]
BUCKET = f"{STACK}-artifactsbucket-0a1b2c3d"
NAMES = [f"j{i}" for i in range(2500)]
TABLE_USERS = ["SubmitJobsFunctionRole", "PollJobsFunctionRole", "CancelJobsFunctionRole",
               "ReleaseHeadNodeFunctionRole"]


@pytest.fixture(scope="module")
def calls():
    """Every S3 call of three tasks on a wide run: the first store, a load and a store that
    replaces a shard, and one more that deletes what that replaced."""
    recorder = Recorder()
    with mock_aws(), recorder.installed():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        recorder.take()
        run = Run("exec-1", order="parallel", jobs_table=new_table(len(NAMES)))
        for state in (JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED):
            table = JobTable(s3, BUCKET, NAMES)
            given = run
            run = table.load(run)
            run.jobs["j1"] = JobRecord(state=state, job_id="7")
            run = table.store(run, given)
        return [c for c in recorder.take() if c.service == "s3"]


def test_the_recording_covers_every_kind_of_call(calls):
    assert {c.operation for c in calls} == {"PutObject", "GetObject", "DeleteObjects"}


@pytest.mark.parametrize("role", TABLE_USERS)
@pytest.mark.parametrize("backend", ["existing", "parallelcluster"])
def test_each_function_that_works_on_the_jobs_may_make_every_call(calls, role, backend):
    template = json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))
    policy = role_policy(template, role, {"ClusterBackend": backend})
    assert refused(policy, call_needs(calls, {}, "jobtable")) == []
    # and no further than the tables: not a job's results, not another bucket
    assert not policy.allows("s3:DeleteObject", f"arn:aws:s3:::{BUCKET}/exec-1/j1/stdout", {})
    assert not policy.allows("s3:GetObject", "arn:aws:s3:::other-bucket/exec-1/.jobs/0-x.json", {})


# -- a resumed run: Create Cluster's check and Submit Jobs' reading of the earlier manifest --------

@pytest.fixture(scope="module")
def resume_calls():
    """Every call of resume's checks: the earlier manifest read (and one that is not there:
    S3 says "no such key" only to a caller that may list the bucket) and the earlier
    execution's status."""
    from stepcluster import resume
    from stepcluster.errors import InputError
    from stepcluster.executions import Executions

    from .template import execution_arn

    recorder = Recorder()
    with mock_aws(), recorder.installed():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        earlier = execution_arn("run-1")
        s3.put_object(Bucket=BUCKET, Key="run-1/manifest.json",
                      Body=json.dumps({"execution": "run-1", "execution_arn": earlier, "jobs": {}}))
        recorder.take()
        resume.earlier_manifest(s3, BUCKET, "run-1", execution_arn("run-2"))
        with pytest.raises(InputError):
            resume.earlier_manifest(s3, BUCKET, "run-9", execution_arn("run-2"))
        Executions(region="us-east-1").status(earlier)
        return recorder.take()


@pytest.mark.parametrize("role, backend", [("ClusterFunctionRole", "existing"), ("ClusterFunctionRole", "cfncluster"),
                                           ("ParallelClusterFunctionRole", "parallelcluster")])
def test_create_cluster_may_check_the_run_it_resumes(resume_calls, role, backend):
    assert {c.name for c in resume_calls} == {"s3:GetObject", "stepfunctions:DescribeExecution"}
    template = json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))
    policy = role_policy(template, role, {"ClusterBackend": backend})
    assert refused(policy, call_needs(resume_calls, {}, "resume check")) == []
    assert policy.allows("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {})


@pytest.mark.parametrize("backend", ["existing", "parallelcluster"])
def test_submit_jobs_may_read_the_manifest_of_the_run_it_resumes(resume_calls, backend):
    template = json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))
    policy = role_policy(template, "SubmitJobsFunctionRole", {"ClusterBackend": backend})
    reads = [c for c in resume_calls if c.service == "s3"]
    assert refused(policy, call_needs(reads, {}, "resume")) == []
    assert policy.allows("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {})
