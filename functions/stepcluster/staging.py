"""Gathering a job's files for the head node: from the plan's archive or from S3.

Two paths, chosen by the deployment (template parameter StagingPath):

* "ssh" (default): the function reads the files (S3 objects, or the local_path archive bundled
  with the plan) and sends them over the SSH connection. Works whether or not the head node can
  reach S3; every byte passes through the function (its memory and 15 minutes bound the size).
* "head-node": the head node downloads the files itself over HTTPS with presigned URLs the
  function makes (valid one hour), so large inputs never pass through the function. Needs the
  head node to reach S3 (a route to the internet, a NAT gateway or an S3 VPC endpoint); it
  needs no AWS credentials of its own. local_path archives are first copied, once, to the
  artifacts bucket under packages/ (content-addressed: same content, same key, never copied
  again) and fetched from there.

`s3_uri` naming one object stages that object under its own name; naming a prefix stages
every object below it with its path relative to the prefix. Either way the handler must be
among the staged files, or the job fails before submission.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import PurePosixPath

from stepcluster.errors import StagingError
from stepcluster.jobscripts import q
from stepcluster.plan import Plan, PlannedJob

#: How long a presigned download URL stays valid (the head node fetches at once).
URL_SECONDS = 3600


def add_job_files(tar: tarfile.TarFile, plan: Plan, job: PlannedJob, *, s3_client=None) -> bytes:
    """Add the job's files under jobs/NAME/src/ in `tar`; StagingError if the handler is absent.
    Returns the handler's bytes (its directives are read from them, not again on the head node)."""
    if job.s3_uri:
        files = _s3_files(job.s3_uri, s3_client)
    else:
        files = _archive_files(plan.archive_bytes(job, s3_client))
    _check_handler(job, files)
    for relative, (data, mode) in sorted(files.items()):
        info = tarfile.TarInfo(f"jobs/{job.name}/src/{relative}")
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))
    return files[PurePosixPath(job.handler).as_posix()][0]


def fetch_script(plan: Plan, job: PlannedJob, *, job_dir: str, s3_client, artifacts_bucket: str) -> str:
    """Bash for the head node that downloads the job's files into JOB_DIR/src (head-node path).

    The listing (and the handler check) is done here, so a missing handler fails the job
    before anything is fetched. Prints `@@fetched NAME RC`; on failure curl's complaint goes
    to stderr.
    """
    import boto3

    s3 = s3_client or boto3.client("s3")
    src = f"{job_dir}/src"
    lines = [f"mkdir -p {q(src)} && cd {q(src)} || exit 3", "fail=0"]
    if job.s3_uri:
        keys = _s3_keys(job.s3_uri, s3)
        _check_handler(job, keys)
        for relative, (bucket, key) in sorted(keys.items()):
            url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                            ExpiresIn=URL_SECONDS)
            parent = str(PurePosixPath(relative).parent)
            lines.append(f"mkdir -p {q(parent)} && curl -fsS --retry 3 -o {q(relative)} {q(url)} || fail=1")
    else:
        data = plan.archive_bytes(job, s3)
        _check_handler(job, _archive_files(data))
        if job.package_uri:      # uploaded by preprocess
            bucket, _, key = job.package_uri[5:].partition("/")
        else:                    # bundled with the plan: copy it to the artifacts bucket once
            bucket, key = artifacts_bucket, f"packages/{PurePosixPath(job.archive).name}"
            _upload_once(s3, bucket, key, data)
        url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                        ExpiresIn=URL_SECONDS)
        # GNU tar refuses members with '..' and strips leading '/': nothing lands outside src.
        lines.append(f"curl -fsS --retry 3 {q(url)} | tar -xzf - --no-same-owner || fail=1")
    lines.append(f"printf '@@fetched %s %s\\n' {q(job.name)} \"$fail\"")
    return "\n".join(lines) + "\n"


def _upload_once(s3, bucket: str, key: str, data: bytes) -> None:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        s3.put_object(Bucket=bucket, Key=key, Body=data)


def _check_handler(job: PlannedJob, files) -> None:
    if PurePosixPath(job.handler).as_posix() not in files:
        shown = ", ".join(sorted(files)[:5]) + (" ..." if len(files) > 5 else "")
        raise StagingError(f"handler {job.handler!r} is not among the files staged from "
                           f"{job.describe_source()} ({shown or 'none'})")


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


def _s3_keys(uri: str, client) -> dict[str, tuple[str, str]]:
    """relative path -> (bucket, key) of every object the URI stages."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    try:
        if key and not key.endswith("/"):
            try:
                client.head_object(Bucket=bucket, Key=key)
                return {PurePosixPath(key).name: (bucket, key)}
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404", "NotFound"):
                    raise
        prefix = key.rstrip("/") + "/" if key else ""
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):
                    continue  # a console "folder" marker, not a file
                found[_safe_relative(obj["Key"][len(prefix):], uri)] = (bucket, obj["Key"])
    except (ClientError, BotoCoreError) as exc:
        raise StagingError(f"cannot read {uri}: {exc}") from exc
    if not found:
        raise StagingError(f"nothing found at {uri}")
    return found


def _s3_files(uri: str, client) -> dict[str, tuple[bytes, int]]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or boto3.client("s3")
    keys = _s3_keys(uri, client)
    try:
        return {relative: (client.get_object(Bucket=bucket, Key=key)["Body"].read(), 0o644)
                for relative, (bucket, key) in keys.items()}
    except (ClientError, BotoCoreError) as exc:
        raise StagingError(f"cannot read {uri}: {exc}") from exc
