"""Gathering a job's files for the head node: from the plan's archive or from S3.

The files travel from the function to the head node over SSH, so staging works whether or not
the head node can reach S3 itself. `s3_uri` naming one object stages that object under its own
name; naming a prefix stages every object below it with its path relative to the prefix.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import PurePosixPath

from stepcluster.errors import StagingError
from stepcluster.plan import Plan, PlannedJob


def add_job_files(tar: tarfile.TarFile, plan: Plan, job: PlannedJob, *, s3_client=None) -> None:
    """Add the job's files under jobs/NAME/src/ in `tar`; StagingError if the handler is absent."""
    if job.s3_uri:
        files = _s3_files(job.s3_uri, s3_client)
    else:
        files = _archive_files(plan.archive_bytes(job))
    if PurePosixPath(job.handler).as_posix() not in files:
        shown = ", ".join(sorted(files)[:5]) + (" ..." if len(files) > 5 else "")
        raise StagingError(f"handler {job.handler!r} is not among the files staged from "
                           f"{job.describe_source()} ({shown or 'none'})")
    for relative, (data, mode) in sorted(files.items()):
        info = tarfile.TarInfo(f"jobs/{job.name}/src/{relative}")
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))


def _safe_relative(path: str, source: str) -> str:
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or ".." in parts:
        raise StagingError(f"refusing to stage {path!r} from {source}: absolute or '..' path")
    return PurePosixPath(*parts).as_posix()


def _archive_files(data: bytes) -> dict[str, tuple[bytes, int]]:
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                raise StagingError(f"archive member {member.name!r} is not a regular file")
            name = _safe_relative(member.name, "the job's archive")
            files[name] = (tar.extractfile(member).read(), member.mode & 0o777)
    return files


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise StagingError(f"not an S3 URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def _s3_files(uri: str, client) -> dict[str, tuple[bytes, int]]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or boto3.client("s3")
    bucket, key = split_s3_uri(uri)
    try:
        if key and not key.endswith("/"):
            try:
                body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                return {PurePosixPath(key).name: (body, 0o644)}
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                    raise
        prefix = key.rstrip("/") + "/" if key else ""
        files = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):
                    continue  # a console "folder" marker, not a file
                relative = _safe_relative(obj["Key"][len(prefix):], uri)
                files[relative] = (client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read(), 0o644)
    except (ClientError, BotoCoreError) as exc:
        raise StagingError(f"cannot read {uri}: {exc}") from exc
    if not files:
        raise StagingError(f"nothing found at {uri}")
    return files
