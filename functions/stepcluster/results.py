"""A run's results, kept: each started job's stdout, stderr, exit record and output folder,
streamed from the head node (one tar over the SSH connection) into the artifacts bucket.

Layout: s3://BUCKET/EXECUTION/JOB/{stdout,stderr,exit_code,output/...} and
s3://BUCKET/EXECUTION/manifest.json (every job: id, state, exit code, times, results prefix).
"""

from __future__ import annotations

import io
import json
import tarfile

from stepcluster import jobscripts, logs
from stepcluster.record import Run

log = logs.logger(__name__)

#: Per-job result locations go into the run record only while it stays below this size.
RESULTS_IN_PAYLOAD_BUDGET = 192 * 1024


def collect(ssh, run: Run, bucket: str, *, s3_client=None) -> dict:
    """Stream the jobs' results from the head node into S3; write the run's manifest.

    Layout: s3://BUCKET/EXECUTION/JOB/{stdout,stderr,exit_code,output/...} and
    s3://BUCKET/EXECUTION/manifest.json (every job: state, exit code, its results prefix).
    """
    import boto3

    s3 = s3_client or boto3.client("s3")
    execution = run.execution
    started = [n for n, j in run.jobs.items() if j.job_id]
    collected = set()
    if started:
        with ssh.stream_script(jobscripts.results_script(run.run_dir, started)) as stream:
            head = stream.read(2)
            if head:
                with tarfile.open(fileobj=_Prefixed(head, stream), mode="r|gz") as tar:
                    for member in tar:
                        if not member.isfile():
                            continue  # folders are implied; links are not followed out
                        job, _, rest = member.name.partition("/")
                        rest = "exit_code" if rest == "result" else rest
                        s3.upload_fileobj(_Unseekable(tar.extractfile(member)), bucket,
                                          f"{execution}/{job}/{rest}")
                        collected.add(job)
    prefix = f"s3://{bucket}/{execution}/"
    manifest = {"execution": execution, "cluster_name": run.cluster_name,
                "jobs": {name: {**job.to_dict(), "results": f"{prefix}{name}/" if name in collected else None}
                         for name, job in run.jobs.items()}}
    s3.put_object(Bucket=bucket, Key=f"{execution}/manifest.json",
                  Body=json.dumps(manifest, indent=1).encode(), ContentType="application/json")
    log.info("kept results of %d jobs under %s", len(collected), prefix)
    # Each job's location in the execution output too, while the payload stays well under
    # Step Functions' 256 KiB (for very wide runs the manifest alone lists them).
    extra = sum(len(prefix) + len(name) + 16 for name in collected)
    if len(json.dumps(run.to_dict(), separators=(",", ":"))) + extra < RESULTS_IN_PAYLOAD_BUDGET:
        for name in collected:
            run.jobs[name] = run.jobs[name].but(results=f"{prefix}{name}/")
    return {"prefix": prefix, "manifest": f"{prefix}manifest.json", "jobs_collected": len(collected)}



class _Unseekable(io.RawIOBase):
    """A tar member read from a stream: S3's uploader must not try to seek in it."""

    def __init__(self, source):
        self._source = source

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._source.read(size)


class _Prefixed(io.RawIOBase):
    """A stream with a few bytes already read put back in front."""

    def __init__(self, head: bytes, rest):
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._rest.read(size)
        if size is None or size < 0:
            data, self._head = self._head + self._rest.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        if len(data) < size:
            data += self._rest.read(size - len(data))
        return data
