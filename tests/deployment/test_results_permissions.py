"""The S3 calls that keep a run's results (stepcluster results.py), recorded at botocore's
boundary under moto, are each allowed by the roles of the functions that make them: the polling
round that sees a job end, Release Head Node, and the cluster function's abort cleanup on an
existing head node. moto enforces no IAM, so without this a missing permission would show only
in AWS (as it would have: the round's copies need PutObject, the manifest's read-back GetObject
and ListBucket, a broken multipart upload AbortMultipartUpload)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import boto3
import pytest
from cfnlint.decode import cfn_yaml
from moto import mock_aws

from stepcluster import results

from functional.test_results import LocalStream, WatchedS3, job_dir, run_record

from .iam import role_policy
from .permissions import call_needs, refused
from .recording import Recorder
from .template import STACK

ROOT = Path(__file__).resolve().parents[2]
#: The artifacts bucket as the template resolver names it (template.py's physical ARNs).
BUCKET = f"{STACK}-artifactsbucket-0a1b2c3d"
KEEPERS = [("PollJobsFunctionRole", {"ClusterBackend": "existing"}),
           ("ReleaseHeadNodeFunctionRole", {"ClusterBackend": "parallelcluster"}),
           ("ReleaseHeadNodeFunctionRole", {"ClusterBackend": "existing"}),
           ("ClusterFunctionRole", {"ClusterBackend": "existing"})]


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    """Every S3 call of: a round keeping one job (no manifest yet), the release keeping the
    rest (a file in parts, a packed folder; the manifest read back), and a release whose
    multipart upload breaks (aborted)."""
    root = tmp_path_factory.mktemp("results")
    recorder = Recorder()
    with mock_aws(), recorder.installed():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        recorder.take()
        job_dir(root, "a", {"stdout": "a\n", "result": "0 0 1764460000\n"})
        job_dir(root, "b", {"stdout": "b\n", **{f"output/{i}": "x" for i in range(results.ARCHIVE_ABOVE_FILES + 1)}})
        (root / "jobs" / "c" / "output").mkdir(parents=True)
        (root / "jobs" / "c" / "output" / "big").write_bytes(random.Random(1).randbytes(results.PART_SIZE + 1))
        run = run_record(root, {"a": {"job_id": "1", "state": "SUCCEEDED"}, "b": {"job_id": "2", "state": "CANCELLED"},
                                "c": {"job_id": "3", "state": "FAILED"}})
        results.collect(LocalStream(), run, BUCKET, s3_client=s3, names=["a"])
        results.collect(LocalStream(), run, BUCKET, s3_client=s3)
        broken = run_record(root, {"c": {"job_id": "3", "state": "FAILED"}})
        results.collect(LocalStream(), broken, BUCKET, s3_client=WatchedS3(s3, fail=lambda key: key.endswith("/big")))
        return [c for c in recorder.take() if c.service == "s3"]


def test_the_recording_covers_every_kind_of_call(calls):
    assert {c.operation for c in calls} >= {"PutObject", "GetObject", "CreateMultipartUpload", "UploadPart",
                                            "CompleteMultipartUpload", "AbortMultipartUpload"}


@pytest.mark.parametrize("role, parameters", KEEPERS)
def test_each_function_that_keeps_results_may_make_every_call(calls, role, parameters):
    template = json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))
    policy = role_policy(template, role, parameters)
    assert refused(policy, call_needs(calls, {}, "results.collect")) == []
    # the first round finds no manifest: with ListBucket S3 says so (404), without it 403
    assert policy.allows("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {})
