"""Staging a job's files (staging.py): what reaches the head node, and what never may."""

from __future__ import annotations

import io
import tarfile

import boto3
import pytest
from moto import mock_aws

from stepcluster import staging
from stepcluster.errors import StagingError
from stepcluster.plan import Plan, PlannedJob

BUCKET = "inputs"


def archive(members: dict[str, bytes | None], *, links: dict[str, str] | None = None) -> bytes:
    """A gzipped tar; None as content makes a directory member."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def local_job(tmp_path, data: bytes, handler="run.sh") -> tuple[Plan, PlannedJob]:
    (tmp_path / "payloads").mkdir(exist_ok=True)
    (tmp_path / "payloads" / "a.tar.gz").write_bytes(data)
    job = PlannedJob("a", handler, 10, archive="payloads/a.tar.gz")
    return Plan("sequential", (job,), "d", folder=tmp_path), job


def staged(plan: Plan, job: PlannedJob, s3=None) -> dict[str, tuple[bytes, int]]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        staging.add_job_files(tar, plan, job, s3_client=s3)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        return {m.name: (tar.extractfile(m).read(), m.mode) for m in tar.getmembers()}


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def test_an_archive_is_staged_under_the_jobs_src_with_its_modes(tmp_path):
    plan, job = local_job(tmp_path, archive({"run.sh": b"#!/bin/sh\n", "lib/x.txt": b"x"}))
    assert staged(plan, job) == {"jobs/a/src/run.sh": (b"#!/bin/sh\n", 0o755),
                                 "jobs/a/src/lib/x.txt": (b"x", 0o755)}


def test_a_directory_member_is_refused_as_not_a_regular_file(tmp_path):
    plan, job = local_job(tmp_path, archive({"run.sh": b"x", "lib": None}))
    with pytest.raises(StagingError, match="'lib' is not a regular file"):
        staged(plan, job)


@pytest.mark.parametrize("name", ["../run.sh", "lib/../../etc/cron.d/x", "/etc/passwd"])
def test_archive_members_that_would_land_outside_the_job_folder_are_refused(tmp_path, name):
    plan, job = local_job(tmp_path, archive({"run.sh": b"x", name: b"evil"}))
    with pytest.raises(StagingError, match="absolute or '..' path"):
        staged(plan, job)


def test_a_symlink_in_an_archive_is_refused(tmp_path):
    plan, job = local_job(tmp_path, archive({"run.sh": b"x"}, links={"passwd": "/etc/passwd"}))
    with pytest.raises(StagingError, match="not a regular file"):
        staged(plan, job)


def test_a_missing_handler_fails_before_anything_is_sent_naming_the_files(tmp_path):
    plan, job = local_job(tmp_path, archive({"other.sh": b"x"}))
    with pytest.raises(StagingError, match=r"handler 'run.sh' is not among .* \(other.sh\)"):
        staged(plan, job)


def test_an_s3_prefix_keeps_relative_paths_and_skips_folder_markers(s3):
    for key in ("proj/run.sh", "proj/data/in.txt", "proj/data/", "projection/not-this.txt"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    job = PlannedJob("a", "run.sh", 10, s3_uri=f"s3://{BUCKET}/proj/")
    files = staged(Plan("sequential", (job,), "d"), job, s3)
    assert {k: v[0] for k, v in files.items()} == {"jobs/a/src/run.sh": b"proj/run.sh",
                                                   "jobs/a/src/data/in.txt": b"proj/data/in.txt"}


def test_an_s3_object_is_staged_under_its_own_name(s3):
    s3.put_object(Bucket=BUCKET, Key="scripts/v2/run.sh", Body=b"echo")
    job = PlannedJob("a", "run.sh", 10, s3_uri=f"s3://{BUCKET}/scripts/v2/run.sh")
    assert {k: v[0] for k, v in staged(Plan("sequential", (job,), "d"), job, s3).items()} == {
        "jobs/a/src/run.sh": b"echo"}


def test_s3_keys_with_dot_dot_below_the_prefix_are_refused(s3):
    s3.put_object(Bucket=BUCKET, Key="proj/run.sh", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="proj/../../escape", Body=b"x")
    job = PlannedJob("a", "run.sh", 10, s3_uri=f"s3://{BUCKET}/proj/")
    with pytest.raises(StagingError, match="absolute or '..' path"):
        staged(Plan("sequential", (job,), "d"), job, s3)


def test_nothing_at_the_uri_is_a_clear_error(s3):
    job = PlannedJob("a", "run.sh", 10, s3_uri=f"s3://{BUCKET}/nothing/")
    with pytest.raises(StagingError, match=f"nothing found at s3://{BUCKET}/nothing/"):
        staged(Plan("sequential", (job,), "d"), job, s3)


def test_head_node_fetch_quotes_every_url_and_copies_a_bundled_package_once(tmp_path, s3):
    s3.create_bucket(Bucket="artifacts")
    plan, job = local_job(tmp_path, archive({"run.sh": b"x"}))
    script, version = staging.fetch_script(plan, job, job_dir="/home/hpc/runs/e/jobs/a", s3_client=s3,
                                           artifacts_bucket="artifacts")
    assert version is None   # a package is named by its content already
    url = next(line for line in script.splitlines() if line.startswith("curl "))
    assert url.startswith("curl -fsS --retry 3 'https://") and "| tar -xzf - --no-same-owner" in url
    assert s3.get_object(Bucket="artifacts", Key="packages/a.tar.gz")["Body"].read() == \
        (tmp_path / "payloads" / "a.tar.gz").read_bytes()
    puts = []
    s3.meta.events.register("before-call.s3.PutObject", lambda **kw: puts.append(1))
    staging.fetch_script(plan, job, job_dir="/x", s3_client=s3, artifacts_bucket="artifacts")
    assert puts == []   # content-addressed: already there, not copied again


def test_head_node_fetch_of_an_s3_prefix_downloads_each_file_to_its_place(s3, monkeypatch):
    for key in ("proj/run.sh", "proj/data/in put.txt"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    signed = []
    monkeypatch.setattr(s3, "generate_presigned_url", lambda op, Params, ExpiresIn: signed.append(
        (op, Params, ExpiresIn)) or f"https://signed/{Params['Key']}")
    job = PlannedJob("a", "run.sh", 10, s3_uri=f"s3://{BUCKET}/proj")   # a prefix, without the slash
    script, version = staging.fetch_script(Plan("sequential", (job,), "d"), job, job_dir="/r/jobs/a",
                                           s3_client=s3, artifacts_bucket="artifacts")
    assert version == staging.current_source_version(job.s3_uri, s3)
    assert script.splitlines() == [
        "mkdir -p /r/jobs/a/src && cd /r/jobs/a/src || exit 3",
        "fail=0",
        "mkdir -p data && curl -fsS --retry 3 -o 'data/in put.txt' 'https://signed/proj/data/in put.txt' || fail=1",
        "mkdir -p . && curl -fsS --retry 3 -o run.sh https://signed/proj/run.sh || fail=1",
        "printf '@@fetched %s %s\\n' a \"$fail\"",
    ]
    assert {(op, p["Bucket"], p["Key"], seconds) for op, p, seconds in signed} == {
        ("get_object", BUCKET, "proj/run.sh", 3600), ("get_object", BUCKET, "proj/data/in put.txt", 3600)}


def test_a_missing_handler_fails_the_head_node_fetch_before_any_url_is_made(s3, monkeypatch):
    s3.put_object(Bucket=BUCKET, Key="proj/other.sh", Body=b"x")
    monkeypatch.setattr(s3, "generate_presigned_url", lambda *a, **k: pytest.fail("a URL was made"))
    job = PlannedJob("a", "run.sh", 10, s3_uri=f"s3://{BUCKET}/proj/")
    with pytest.raises(StagingError, match="handler 'run.sh' is not among"):
        staging.fetch_script(Plan("sequential", (job,), "d"), job, job_dir="/r", s3_client=s3,
                             artifacts_bucket="artifacts")


def test_s3_errors_other_than_not_found_are_staging_errors_naming_the_uri(s3):
    job = PlannedJob("a", "run.sh", 10, s3_uri="s3://no-such-bucket-here/x.sh")
    with pytest.raises(StagingError, match="cannot read s3://no-such-bucket-here/x.sh"):
        staged(Plan("sequential", (job,), "d"), job, s3)


def test_only_s3_uris_are_split():
    assert staging.split_s3_uri("s3://b/k/x") == ("b", "k/x")
    with pytest.raises(StagingError, match="not an S3 URI"):
        staging.split_s3_uri("https://b/k")


def version_staged(s3, job: PlannedJob) -> str | None:
    with tarfile.open(fileobj=io.BytesIO(), mode="w") as tar:
        return staging.add_job_files(tar, Plan("sequential", (job,), "d"), job, s3_client=s3)[1]


def test_an_s3_jobs_objects_have_a_version_that_any_change_of_content_or_listing_changes(s3):
    for key in ("proj/run.sh", "proj/data/in.txt"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"v1")
    job = PlannedJob("a", "run.sh", 10, s3_uri=f"s3://{BUCKET}/proj/")
    first = version_staged(s3, job)
    assert first and version_staged(s3, job) == first == staging.current_source_version(job.s3_uri, s3)
    s3.put_object(Bucket=BUCKET, Key="proj/data/in.txt", Body=b"v1")   # same bytes again: same version
    assert staging.current_source_version(job.s3_uri, s3) == first
    s3.put_object(Bucket=BUCKET, Key="proj/data/in.txt", Body=b"v2")   # new content
    second = staging.current_source_version(job.s3_uri, s3)
    assert second != first and version_staged(s3, job) == second
    s3.put_object(Bucket=BUCKET, Key="proj/data/more.txt", Body=b"v2")  # an object more
    assert staging.current_source_version(job.s3_uri, s3) not in (first, second)
    single = PlannedJob("b", "run.sh", 10, s3_uri=f"s3://{BUCKET}/proj/run.sh")   # one object
    before = version_staged(s3, single)
    s3.put_object(Bucket=BUCKET, Key="proj/run.sh", Body=b"v3")
    assert before and staging.current_source_version(single.s3_uri, s3) != before
    assert staging.current_source_version(f"s3://{BUCKET}/gone/", s3) is None
    assert staging.current_source_version("s3://no-such-bucket-here/x/", s3) is None
