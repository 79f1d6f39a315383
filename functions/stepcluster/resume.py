"""Resuming a run: a new execution that does not run again what an earlier one finished.

`{"cluster_name": "c2", "resume": "<earlier execution name or ARN>"}`. The earlier execution's
manifest in this stack's artifacts bucket is the source of truth (each stack has its own bucket,
so another stack's execution is simply not there): every job it lists as SUCCEEDED whose work is
unchanged (`PlannedJob.work_digest`: handler, source, resources; for an s3_uri job also the
objects at that address, `staging.source_version`) and whose prerequisites are all skipped too
is not run again. It is SUCCEEDED in the new run from the start, its results are the
earlier ones (the manifest says where: `resumed_from`, and `results` under that execution's
prefix), and the jobs that wait for it run as if it had just succeeded. A job whose work changed
runs again, and so does every job that waits for it.

Create Cluster checks the reference at once (`earlier_manifest`: before any cluster exists);
Submit Jobs, whose records may be in the bucket (jobtable.py), applies it (`skipped_jobs`).
"""

from __future__ import annotations

import json
import re
from typing import Mapping

from stepcluster import graph
from stepcluster.errors import InputError
from stepcluster.record import JobRecord, JobState

#: Step Functions' execution names: 1-80 characters, none of whitespace, brackets, wildcards,
#: and the special characters its API lists ("#%\^|~`$&,;:/ and control characters).
_EXECUTION_NAME = re.compile(r"[^\s<>{}\[\]?*\"#%\\^|~`$&,;:/\x00-\x1f\x7f]{1,80}")


def execution_name(reference: object) -> str:
    """The execution name of `resume` (a name or an execution ARN); InputError if it is neither."""
    if not isinstance(reference, str) or not reference:
        raise InputError(f"resume must be an earlier execution's name or ARN, got {reference!r}")
    name = reference.rsplit(":", 1)[-1] if reference.startswith("arn:") else reference
    if reference.startswith("arn:") and ":execution:" not in reference:
        raise InputError(f"resume: {reference!r} is not an execution ARN "
                         "(arn:aws:states:REGION:ACCOUNT:execution:STATE_MACHINE:NAME)")
    if not _EXECUTION_NAME.fullmatch(name) or name in (".", ".."):
        raise InputError(f"resume: {name!r} is not an execution name")
    return name


def earlier_manifest(s3, bucket: str | None, reference: str, execution_arn: str | None) -> dict:
    """The manifest of the execution `reference` names, checked to be one of this state
    machine's (`execution_arn`: the new execution's); InputError naming what is wrong."""
    name = execution_name(reference)
    if not bucket:
        raise InputError("resume needs the artifacts bucket, and none is set (STEPCLUSTER_ARTIFACTS_BUCKET)")
    key = f"{name}/manifest.json"
    try:
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        raise InputError(f"resume: this stack has no execution {name!r} (no s3://{bucket}/{key}: an "
                         "execution of another stack keeps its results in that stack's bucket, and one "
                         "that never started a job has none)") from None
    except ValueError as exc:
        raise InputError(f"resume: s3://{bucket}/{key} is not a manifest: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("jobs"), dict):
        raise InputError(f"resume: s3://{bucket}/{key} is not a manifest (no jobs)")
    earlier_arn = manifest.get("execution_arn")
    if reference.startswith("arn:") and earlier_arn and earlier_arn != reference:
        raise InputError(f"resume: {reference} is not the execution whose results are in "
                         f"s3://{bucket}/{name}/ ({earlier_arn})")
    if earlier_arn and execution_arn and _machine(earlier_arn) != _machine(execution_arn):
        raise InputError(f"resume: {earlier_arn} belongs to another state machine than this one "
                         f"({_machine(execution_arn)})")
    return manifest


def _machine(execution_arn: str) -> str:
    """arn:...:execution:MACHINE:NAME -> arn:...:stateMachine:MACHINE."""
    head, _, rest = execution_arn.partition(":execution:")
    return f"{head}:stateMachine:{rest.rsplit(':', 1)[0]}"


def finished_unchanged(manifest: dict, digests: Mapping[str, str]) -> list[str]:
    """The jobs the earlier execution finished (SUCCEEDED) with the same work digest: those
    that may be spared, once their objects (s3_uri) and prerequisites are looked at."""
    return [name for name, entry in manifest["jobs"].items()
            if isinstance(entry, dict) and entry.get("state") == JobState.SUCCEEDED.value
            and entry.get("digest") and entry.get("digest") == digests.get(name)]


def objects_changed(manifest: dict, source_versions: Mapping[str, str | None]) -> list[str]:
    """The s3_uri jobs among `source_versions` ({job: its objects' version now, None when they
    cannot be read}) whose objects are not those the earlier execution staged."""
    return [name for name, now in source_versions.items()
            if not now or (manifest["jobs"].get(name) or {}).get("source_version") != now]


def skipped_jobs(manifest: dict, digests: Mapping[str, str], prerequisites: Mapping[str, tuple[str, ...]],
                 source_versions: Mapping[str, str | None] | None = None) -> dict[str, JobRecord]:
    """{job: its record in the new run} of the jobs the earlier execution finished and this one
    does not run again: SUCCEEDED there, the same work (`digests`: the plan's work digests),
    for an s3_uri job the same objects (`source_versions`: theirs now, for each s3_uri job of
    `finished_unchanged`), and every job it waits for skipped too (pure: the caller reads the
    manifest and lists the objects)."""
    earlier = manifest["jobs"]
    source = manifest.get("execution")
    spared = set(finished_unchanged(manifest, digests)) - set(objects_changed(manifest, source_versions or {}))
    skipped: dict[str, JobRecord] = {}
    for level in graph.levels(prerequisites):
        for name in level:
            if name not in spared or not all(p in skipped for p in prerequisites.get(name, ())):
                continue
            entry = earlier[name]
            skipped[name] = JobRecord(
                state=JobState.SUCCEEDED, job_id=entry.get("job_id"), exit_code=entry.get("exit_code", 0),
                started=entry.get("started"), ended=entry.get("ended"), kept=True,
                # results stay where they were kept: a job resumed twice points at the first run
                resumed_from=entry.get("resumed_from") or source, source_version=entry.get("source_version"))
    return skipped
