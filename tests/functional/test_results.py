"""Results kept (results.py): the real collection script run by a local bash, streamed into
moto's S3, as Release Head Node does over SSH."""

from __future__ import annotations

import contextlib
import json
import subprocess

import boto3
import pytest
from moto import mock_aws

from stepcluster.record import Run
from stepcluster import results

BUCKET = "artifacts"


class LocalStream:
    """The SSH connection's stream_script, on a local bash."""

    @contextlib.contextmanager
    def stream_script(self, script, *, timeout=600):
        process = subprocess.Popen(["bash", "-s"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        process.stdin.write(script.encode())
        process.stdin.close()
        try:
            yield process.stdout
        finally:
            assert process.wait(timeout=timeout) == 0


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def objects(s3) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def job_dir(root, name, files: dict[str, str]):
    for relative, text in files.items():
        path = root / "jobs" / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def run_record(root, jobs):
    return Run.from_dict({"execution": "exec-1", "cluster_name": "c1", "order": "parallel",
                          "cluster": {"status": "READY", "run_dir": str(root)}, "jobs": jobs})


def test_every_started_jobs_files_reach_s3_with_the_manifest(tmp_path, s3):
    job_dir(tmp_path, "a", {"stdout": "out\n", "stderr": "err\n", "result": "0 0 1764460000\n",
                            "output/deep/x.txt": "x", "output/-n name with spaces": "y"})
    job_dir(tmp_path, "never", {"stdout": "must not be kept"})
    (tmp_path / "jobs" / "a" / "output" / "passwd").symlink_to("/etc/passwd")
    run = run_record(tmp_path, {"a": {"job_id": "7", "state": "SUCCEEDED"},
                                "quiet": {"job_id": "8", "state": "FAILED"},
                                "never": {"state": "NOT_STARTED"}})

    summary = results.collect(LocalStream(), run, BUCKET, s3_client=s3)

    kept = objects(s3)
    manifest = json.loads(kept.pop("exec-1/manifest.json"))
    assert kept == {"exec-1/a/stdout": b"out\n", "exec-1/a/stderr": b"err\n",
                    "exec-1/a/exit_code": b"0 0 1764460000\n", "exec-1/a/output/deep/x.txt": b"x",
                    "exec-1/a/output/-n name with spaces": b"y"}   # the link is not followed
    assert manifest["jobs"]["a"]["results"] == f"s3://{BUCKET}/exec-1/a/"
    assert manifest["jobs"]["quiet"]["results"] is None and manifest["jobs"]["never"]["results"] is None
    assert manifest["jobs"]["quiet"]["state"] == "FAILED"
    assert run.jobs["a"].results == f"s3://{BUCKET}/exec-1/a/" and run.jobs["quiet"].results is None
    assert summary == {"prefix": f"s3://{BUCKET}/exec-1/", "manifest": f"s3://{BUCKET}/exec-1/manifest.json",
                       "jobs_collected": 1}


def test_nothing_started_still_writes_the_manifest(tmp_path, s3):
    (tmp_path / "jobs").mkdir()
    run = run_record(tmp_path, {"a": {"state": "NOT_STARTED"}})
    assert results.collect(LocalStream(), run, BUCKET, s3_client=s3)["jobs_collected"] == 0
    assert list(objects(s3)) == ["exec-1/manifest.json"]


def test_a_wide_run_keeps_locations_in_the_manifest_only(tmp_path, s3, monkeypatch):
    job_dir(tmp_path, "a", {"stdout": "x"})
    monkeypatch.setattr(results, "RESULTS_IN_PAYLOAD_BUDGET", 10)
    run = run_record(tmp_path, {"a": {"job_id": "1"}})
    results.collect(LocalStream(), run, BUCKET, s3_client=s3)
    assert run.jobs["a"].results is None
    assert json.loads(objects(s3)["exec-1/manifest.json"])["jobs"]["a"]["results"] == f"s3://{BUCKET}/exec-1/a/"
