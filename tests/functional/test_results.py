"""Results kept (results.py): the real collection script run by a local bash, streamed into
moto's S3, as Release Head Node does over SSH."""

from __future__ import annotations

import collections
import contextlib
import io
import json
import random
import subprocess
import tarfile
import threading
import time

import boto3
import pytest
from botocore.exceptions import ClientError
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


# -- many files, bounded concurrency and memory, failures reported (issue 9) -----------------

class WatchedS3:
    """The S3 client, its requests counted as they overlap (a short sleep makes them overlap,
    `delay` seconds or `delay(request, how many so far)`); `fail(key)` says which keys' puts and
    parts fail, as after botocore's retries."""

    REQUESTS = ("put_object", "upload_part", "create_multipart_upload", "complete_multipart_upload",
                "abort_multipart_upload")

    def __init__(self, client, *, delay=0.0, fail=lambda key: False):
        self._client, self._delay, self._fail = client, delay, fail
        self._lock = threading.Lock()
        self.in_flight = self.most_in_flight = self.bytes_in_flight = self.most_bytes_in_flight = 0
        self.calls = collections.Counter()

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if name not in self.REQUESTS:
            return attribute

        def request(**kwargs):
            size = len(kwargs.get("Body", b""))
            with self._lock:
                self.calls[name] += 1
                delay = self._delay(name, self.calls[name]) if callable(self._delay) else self._delay
                self.in_flight += 1
                self.bytes_in_flight += size
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                self.most_bytes_in_flight = max(self.most_bytes_in_flight, self.bytes_in_flight)
            try:
                time.sleep(delay)
                if name in ("put_object", "upload_part") and self._fail(kwargs["Key"]):
                    raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"}}, name)
                return attribute(**kwargs)
            finally:
                with self._lock:
                    self.in_flight -= 1
                    self.bytes_in_flight -= size
        return request


def archive_files(s3, key) -> dict[str, bytes]:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def all_keys(s3) -> list[str]:
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]


def test_20000_output_files_are_all_kept_in_one_archive(tmp_path, s3):
    output = tmp_path / "jobs" / "a" / "output"
    (output / "sub").mkdir(parents=True)
    for i in range(20_000):
        (output / ("sub" if i % 2 else "") / f"f{i:05d}").write_text(f"file {i}\n")
    job_dir(tmp_path, "a", {"stdout": "out\n", "result": "0 0 1764460000\n"})
    run = run_record(tmp_path, {"a": {"job_id": "7", "state": "SUCCEEDED"}})

    summary = results.collect(LocalStream(), run, BUCKET, s3_client=s3)

    assert sorted(all_keys(s3)) == ["exec-1/a/exit_code", "exec-1/a/output.tar.gz", "exec-1/a/stdout",
                                    "exec-1/manifest.json"]
    packed = archive_files(s3, "exec-1/a/output.tar.gz")
    assert len(packed) == 20_000
    assert packed["output/f00000"] == b"file 0\n" and packed["output/sub/f00001"] == b"file 1\n"
    assert packed["output/sub/f19999"] == b"file 19999\n" and packed["output/f12344"] == b"file 12344\n"
    job = json.loads(objects(s3)["exec-1/manifest.json"])["jobs"]["a"]
    assert job["output_archive"] == f"s3://{BUCKET}/exec-1/a/output.tar.gz" and job["output_files"] == 20_000
    assert summary == {"prefix": f"s3://{BUCKET}/exec-1/", "manifest": f"s3://{BUCKET}/exec-1/manifest.json",
                       "jobs_collected": 1}
    assert run.jobs["a"].results == f"s3://{BUCKET}/exec-1/a/"


def test_only_a_folder_above_the_threshold_is_packed(tmp_path, s3, monkeypatch):
    monkeypatch.setattr(results, "ARCHIVE_ABOVE_FILES", 3)
    # a name with a newline in it is one file (3 here, not 4)
    job_dir(tmp_path, "few", {"output/1": "1", "output/line\nbreak": "2", "output/d/3": "3"})
    job_dir(tmp_path, "many", {"stdout": "o", "output/1": "1", "output/2": "2", "output/3": "3",
                               "output/d/4": "4"})
    run = run_record(tmp_path, {"few": {"job_id": "1"}, "many": {"job_id": "2"}})

    results.collect(LocalStream(), run, BUCKET, s3_client=s3)

    kept = objects(s3)
    manifest = json.loads(kept.pop("exec-1/manifest.json"))
    archive = kept.pop("exec-1/many/output.tar.gz")
    assert kept == {"exec-1/few/output/1": b"1", "exec-1/few/output/line\nbreak": b"2",
                    "exec-1/few/output/d/3": b"3", "exec-1/many/stdout": b"o"}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["output/1", "output/2", "output/3", "output/d/4"]
    assert "output_archive" not in manifest["jobs"]["few"] and manifest["jobs"]["many"]["output_files"] == 4


def test_a_wide_run_of_small_folders_packs_its_largest(tmp_path, s3, monkeypatch):
    monkeypatch.setattr(results, "ARCHIVE_ABOVE_FILES", 3)
    monkeypatch.setattr(results, "PLAIN_OUTPUT_FILES_PER_RUN", 5)
    for name, count in (("x", 3), ("y", 3), ("z", 2)):      # 8 plain files: x packed, 5 left
        job_dir(tmp_path, name, {f"output/{i}": str(i) for i in range(count)})
    run = run_record(tmp_path, {n: {"job_id": str(i)} for i, n in enumerate("xyz")})

    results.collect(LocalStream(), run, BUCKET, s3_client=s3)

    assert sorted(all_keys(s3)) == ["exec-1/manifest.json", "exec-1/x/output.tar.gz",
                                    *(f"exec-1/y/output/{i}" for i in range(3)),
                                    *(f"exec-1/z/output/{i}" for i in range(2))]


def test_requests_in_flight_are_bounded(tmp_path, s3, monkeypatch):
    monkeypatch.setattr(results, "UPLOAD_WORKERS", 4)
    job_dir(tmp_path, "a", {f"output/{i}": str(i) for i in range(120)})
    job_dir(tmp_path, "b", {f"output/{i}": str(i) for i in range(80)})
    watched = WatchedS3(s3, delay=0.01)
    run = run_record(tmp_path, {"a": {"job_id": "1"}, "b": {"job_id": "2"}})

    results.collect(LocalStream(), run, BUCKET, s3_client=watched)

    assert len(all_keys(s3)) == 201
    assert objects(s3)["exec-1/b/output/79"] == b"79"
    assert watched.most_in_flight == 4       # concurrent, and never more than the workers
    assert watched.calls["put_object"] == 201


def test_files_that_cannot_be_kept_are_named_and_the_others_kept(tmp_path, s3):
    job_dir(tmp_path, "a", {"stdout": "out", **{f"output/bad{i:02d}": "x" for i in range(12)},
                            **{f"output/good{i}": "y" for i in range(5)}})
    job_dir(tmp_path, "b", {"stdout": "fine"})
    job_dir(tmp_path, "c", {"stdout": "bad"})
    watched = WatchedS3(s3, fail=lambda key: "/bad" in key or key == "exec-1/c/stdout")
    run = run_record(tmp_path, {"a": {"job_id": "1"}, "b": {"job_id": "2"}, "c": {"job_id": "3"}})

    summary = results.collect(LocalStream(), run, BUCKET, s3_client=watched)

    kept = objects(s3)
    manifest = json.loads(kept.pop("exec-1/manifest.json"))
    assert kept == {"exec-1/a/stdout": b"out", "exec-1/b/stdout": b"fine",
                    **{f"exec-1/a/output/good{i}": b"y" for i in range(5)}}
    lost = [f"output/bad{i:02d}" for i in range(12)]
    assert sorted(manifest["jobs"]["a"]["not_kept"]) == lost and manifest["jobs"]["a"]["not_kept_count"] == 12
    assert manifest["jobs"]["c"]["not_kept"] == ["stdout"] and manifest["jobs"]["c"]["results"] is None
    assert "not_kept" not in manifest["jobs"]["b"] and manifest["not_kept_count"] == 13
    assert summary["jobs_collected"] == 2 and summary["not_kept_count"] == 13
    assert len(summary["not_kept"]["a"]) == results.NOT_KEPT_NAMES_IN_SUMMARY
    assert set(summary["not_kept"]["a"]) < set(lost) and summary["not_kept"]["c"] == ["stdout"]
    assert run.jobs["c"].results is None and run.jobs["a"].results == f"s3://{BUCKET}/exec-1/a/"


def test_an_archive_that_cannot_be_kept_is_named(tmp_path, s3, monkeypatch):
    monkeypatch.setattr(results, "ARCHIVE_ABOVE_FILES", 1)
    monkeypatch.setattr(results, "PART_SIZE", 5 * 1024 * 1024)
    job_dir(tmp_path, "a", {"stdout": "out", "output/1": "1", "output/2": "2"})   # one put
    job_dir(tmp_path, "b", {"output/1": "1"})
    (tmp_path / "jobs" / "b" / "output" / "big").write_bytes(random.Random(2).randbytes(6 * 1024 * 1024))
    watched = WatchedS3(s3, fail=lambda key: key.endswith("output.tar.gz"))          # in parts
    run = run_record(tmp_path, {"a": {"job_id": "1"}, "b": {"job_id": "2"}})

    summary = results.collect(LocalStream(), run, BUCKET, s3_client=watched)

    assert sorted(all_keys(s3)) == ["exec-1/a/stdout", "exec-1/manifest.json"]
    jobs = json.loads(objects(s3)["exec-1/manifest.json"])["jobs"]
    assert jobs["a"]["not_kept"] == ["output.tar.gz"] and "output_archive" not in jobs["a"]
    assert jobs["a"]["output_files"] == 2 and jobs["b"]["not_kept"] == ["output.tar.gz"]
    assert jobs["b"]["results"] is None and watched.calls["upload_part"] == 2
    assert summary["not_kept"] == {"a": ["output.tar.gz"], "b": ["output.tar.gz"]}
    assert summary["not_kept_count"] == 2 and summary["jobs_collected"] == 1
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []   # aborted


def test_files_bigger_than_the_buffer_are_kept_whole_in_bounded_memory(tmp_path, s3, monkeypatch):
    mib = 1024 * 1024
    monkeypatch.setattr(results, "PART_SIZE", 5 * mib)       # S3's smallest part
    monkeypatch.setattr(results, "BUFFER_BYTES", 11 * mib)
    monkeypatch.setattr(results, "ARCHIVE_ABOVE_FILES", 2)
    big = random.Random(9).randbytes(23 * mib)
    for name, files in (("plain", ["big"]), ("packed", ["big", "small1", "small2"])):
        folder = tmp_path / "jobs" / name / "output"
        folder.mkdir(parents=True)
        for f in files:
            (folder / f).write_bytes(big if f == "big" else f.encode())
    # parts slower than the reading: the reader must wait for them, not read the file into memory
    watched = WatchedS3(s3, delay=lambda request, n: 0.4 if request == "upload_part" else 0)
    run = run_record(tmp_path, {"plain": {"job_id": "1"}, "packed": {"job_id": "2"}})

    summary = results.collect(LocalStream(), run, BUCKET, s3_client=watched)

    assert "not_kept" not in summary
    assert s3.get_object(Bucket=BUCKET, Key="exec-1/plain/output/big")["Body"].read() == big
    assert archive_files(s3, "exec-1/packed/output.tar.gz") == {"output/big": big, "output/small1": b"small1",
                                                                "output/small2": b"small2"}
    assert watched.calls["upload_part"] >= 10 and watched.calls["complete_multipart_upload"] == 2
    assert 5 * mib <= watched.most_bytes_in_flight <= 11 * mib


def test_a_stream_that_breaks_keeps_no_half_file(tmp_path, s3, monkeypatch):
    mib = 1024 * 1024
    monkeypatch.setattr(results, "PART_SIZE", 5 * mib)
    job_dir(tmp_path, "a", {"stdout": "out"})
    (tmp_path / "jobs" / "a" / "output").mkdir()
    (tmp_path / "jobs" / "a" / "output" / "big").write_bytes(random.Random(1).randbytes(12 * mib))

    class BrokenStream(LocalStream):
        @contextlib.contextmanager
        def stream_script(self, script, *, timeout=600):
            with super().stream_script(script, timeout=timeout) as stream:
                if "tar -czf" not in script:
                    yield stream
                    return
                data = stream.read()
                yield io.BytesIO(data[:len(data) * 2 // 3])   # then the connection drops

    run = run_record(tmp_path, {"a": {"job_id": "1"}})
    with pytest.raises((EOFError, tarfile.ReadError)):
        results.collect(BrokenStream(), run, BUCKET, s3_client=s3)
    assert all_keys(s3) == ["exec-1/a/stdout"]
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_retried_jobs_earlier_attempts_are_kept_beside_its_last(tmp_path, s3):
    job_dir(tmp_path, "a", {"stdout": "second\n", "result": "0 0 1764460100\n",
                            "attempt-1/stdout": "first\n", "attempt-1/result": "137 9 1764460000\n",
                            "attempt-1/output/result": "a file the job named result\n"})
    run = run_record(tmp_path, {"a": {"job_id": "2", "state": "SUCCEEDED", "attempt": 2,
                                      "attempts": [{"attempt": 1, "job_id": "1", "state": "FAILED"}]}})
    results.collect(LocalStream(), run, BUCKET, s3_client=s3)
    kept = objects(s3)
    assert kept["exec-1/a/stdout"] == b"second\n" and kept["exec-1/a/exit_code"] == b"0 0 1764460100\n"
    assert kept["exec-1/a/attempt-1/stdout"] == b"first\n"
    assert kept["exec-1/a/attempt-1/exit_code"] == b"137 9 1764460000\n"
    assert kept["exec-1/a/attempt-1/output/result"] == b"a file the job named result\n"    # its own name
    assert json.loads(kept["exec-1/manifest.json"])["jobs"]["a"]["attempts"][0]["job_id"] == "1"
