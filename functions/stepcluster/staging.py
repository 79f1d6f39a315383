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

An `s3_uri` job's objects have a version (`source_version`: their paths, ETags and sizes as
listed when staged). The job's record keeps it, so that a resumed run can tell whether the
objects changed since (a local_path job's package is already named by its content).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import PurePosixPath
from typing import NamedTuple

from stepcluster.errors import StagingError
from stepcluster.jobscripts import q
from stepcluster.plan import Plan, PlannedJob

#: How long a presigned download URL stays valid (the head node fetches at once).
URL_SECONDS = 3600


class S3Object(NamedTuple):
    bucket: str
    key: str
    etag: str
    size: int


def add_job_files(tar: tarfile.TarFile, plan: Plan, job: PlannedJob, *,
                  s3_client=None) -> tuple[bytes, str | None]:
    """Add the job's files under jobs/NAME/src/ in `tar`; StagingError if the handler is absent.
    Returns the handler's bytes (its directives are read from them, not again on the head node)
    and, for an s3_uri job, the `source_version` of what was staged."""
    version = None
    if job.s3_uri:
        import boto3

        s3 = s3_client or boto3.client("s3")
        objects = _s3_keys(job.s3_uri, s3)
        files, version = _s3_files(job.s3_uri, objects, s3), source_version(objects)
    else:
        files = _archive_files(plan.archive_bytes(job, s3_client))
    _check_handler(job, files)
    for relative, (data, mode) in sorted(files.items()):
        info = tarfile.TarInfo(f"jobs/{job.name}/src/{relative}")
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))
    return files[PurePosixPath(job.handler).as_posix()][0], version


def fetch_script(plan: Plan, job: PlannedJob, *, job_dir: str, s3_client,
                 artifacts_bucket: str) -> tuple[str, str | None]:
    """Bash for the head node that downloads the job's files into JOB_DIR/src (head-node path),
    and for an s3_uri job the `source_version` of what it downloads.

    The listing (and the handler check) is done here, so a missing handler fails the job
    before anything is fetched. Prints `@@fetched NAME RC`; on failure curl's complaint goes
    to stderr.
    """
    import boto3

    s3 = s3_client or boto3.client("s3")
    src = f"{job_dir}/src"
    lines = [f"mkdir -p {q(src)} && cd {q(src)} || exit 3", "fail=0"]
    version = None
    if job.s3_uri:
        keys = _s3_keys(job.s3_uri, s3)
        _check_handler(job, keys)
        version = source_version(keys)
        for relative, (bucket, key, _, _) in sorted(keys.items()):
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
    return "\n".join(lines) + "\n", version


def source_version(objects: dict[str, S3Object]) -> str:
    """The version of an s3_uri job's objects: a digest of each one's path, ETag and size (an
    object written again with other content has another ETag)."""
    canonical = "\n".join(f"{relative}\0{obj.etag}\0{obj.size}" for relative, obj in sorted(objects.items()))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def current_source_version(uri: str, s3_client) -> str | None:
    """The `source_version` of the objects at `uri` now; None when they cannot be read."""
    try:
        return source_version(_s3_keys(uri, s3_client))
    except StagingError:
        return None


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


def _s3_keys(uri: str, client) -> dict[str, S3Object]:
    """relative path -> the object, for every object the URI stages."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    try:
        if key and not key.endswith("/"):
            try:
                head = client.head_object(Bucket=bucket, Key=key)
                return {PurePosixPath(key).name: S3Object(bucket, key, head["ETag"], head["ContentLength"])}
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404", "NotFound"):
                    raise
        prefix = key.rstrip("/") + "/" if key else ""
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):
                    continue  # a console "folder" marker, not a file
                found[_safe_relative(obj["Key"][len(prefix):], uri)] = S3Object(
                    bucket, obj["Key"], obj["ETag"], obj["Size"])
    except (ClientError, BotoCoreError) as exc:
        raise StagingError(f"cannot read {uri}: {exc}") from exc
    if not found:
        raise StagingError(f"nothing found at {uri}")
    return found


def _s3_files(uri: str, objects: dict[str, S3Object], client) -> dict[str, tuple[bytes, int]]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        # read after the listing (S3 is strongly consistent): an object rewritten in between is
        # staged newer than its recorded version, which a resume sees as changed: it runs again
        return {relative: (client.get_object(Bucket=obj.bucket, Key=obj.key)["Body"].read(), 0o644)
                for relative, obj in objects.items()}
    except (ClientError, BotoCoreError) as exc:
        raise StagingError(f"cannot read {uri}: {exc}") from exc
