"""Told when a run ends: one message, by SNS, when an execution ends SUCCEEDED, FAILED, ABORTED
or TIMED_OUT (template: NotificationEmail / NotificationTopicArn; the EventBridge rule that
invokes the notify function).

The message says the status and, for a run that did not succeed, its cause; a table of its jobs
(state, exit code, duration, attempts) from the run's manifest; where the results are; the
execution's console link. It fits SNS's 256 KB whatever the run's width: the table lists the
first TABLE_ROWS jobs and counts the rest, and a cause is cut to CAUSE_CHARS.
"""

from __future__ import annotations

import collections
import json

from stepcluster import logs
from stepcluster.decisions import epoch, iso
from stepcluster.resources import hms

log = logs.logger(__name__)

#: SNS: a message of at most 256 KB (262,144 bytes), a subject of at most 100 characters.
MESSAGE_BYTES = 262_144
SUBJECT_CHARS = 100
TABLE_ROWS = 500
CAUSE_CHARS = 8_000


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None or seconds < 0 else hms(int(seconds))


def console_url(execution_arn: str) -> str:
    region = execution_arn.split(":")[3]
    return f"https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{execution_arn}"


def message(execution: dict, manifest: dict | None, bucket: str | None) -> tuple[str, str]:
    """(subject, body) of the message about an ended execution (its DescribeExecution) and its
    manifest (None: it kept none: failed before any job ran). Pure: no I/O."""
    name, status = execution["name"], execution["status"]
    cluster = (manifest or {}).get("cluster_name")
    subject = f"stepcluster: {name} {status}"
    if cluster:
        subject += f" (cluster {cluster})"
    subject = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in subject)[:SUBJECT_CHARS]
    started, stopped = execution.get("startDate"), execution.get("stopDate")
    lines = [f"Execution {name} ended {status}" + (f" on cluster {cluster}." if cluster else "."),
             f"Started {_iso(started)}, ended {_iso(stopped)}"
             + (f" ({_duration((stopped - started).total_seconds())})." if started and stopped else ".")]
    if status != "SUCCEEDED":
        cause = execution.get("cause") or ""
        if len(cause) > CAUSE_CHARS:
            cause = cause[:CAUSE_CHARS] + f"... ({len(cause) - CAUSE_CHARS} more characters in the console)"
        lines += ["", f"{execution.get('error') or status}: {cause}".rstrip(": ")]
    jobs = (manifest or {}).get("jobs") or {}
    if jobs:
        lines += ["", *_table(jobs)]
    if bucket:
        lines += ["", f"Results: s3://{bucket}/{name}/ (manifest.json lists every job)"]
    lines.append(f"Console: {console_url(execution['executionArn'])}")
    body = "\n".join(lines) + "\n"
    if len(body.encode()) > MESSAGE_BYTES:      # only a table of very long names can get here
        body = body.encode()[:MESSAGE_BYTES - 200].decode(errors="ignore") + "\n... (cut to SNS's 256 KB)\n"
    return subject, body


def _table(jobs: dict) -> list[str]:
    counts = collections.Counter(entry.get("state", "?") for entry in jobs.values())
    head = f"Jobs: {len(jobs)} (" + ", ".join(f"{n} {state}" for state, n in counts.most_common()) + ")"
    shown = list(jobs.items())[:TABLE_ROWS]
    width = max([len(name) for name, _ in shown] + [3])
    rows = [head, f"{'job':<{width}}  {'state':<11}  {'exit':>4}  {'duration':>9}  attempts"]
    for name, entry in shown:
        exit_code = entry.get("exit_code")
        if entry.get("signal"):
            exit_code = f"sig{entry['signal']}"
        start, end = epoch(entry.get("started")), epoch(entry.get("ended"))
        took = _duration(end - start) if start is not None and end is not None else "-"
        attempts = len(entry.get("attempts") or []) + 1 if entry.get("job_id") else 0
        note = f"  (from {entry['resumed_from']})" if entry.get("resumed_from") else ""
        rows.append(f"{name:<{width}}  {entry.get('state', '?'):<11}  {exit_code if exit_code is not None else '-'!s:>4}  "
                    f"{took:>9}  {attempts:>8}{note}")
    if len(jobs) > TABLE_ROWS:
        rows.append(f"... and {len(jobs) - TABLE_ROWS} more jobs (the manifest lists them)")
    return rows


def _iso(when) -> str:
    return iso(int(when.timestamp())) if when else "-"


class Notifier:
    """Sends the message about one ended execution to the deployment's topic."""

    def __init__(self, sfn, s3, sns, bucket: str | None, topic_arn: str):
        self.sfn, self.s3, self.sns, self.bucket, self.topic_arn = sfn, s3, sns, bucket, topic_arn

    def notify(self, execution_arn: str) -> dict:
        execution = self.sfn.describe_execution(executionArn=execution_arn)
        manifest = None
        if self.bucket:
            try:
                manifest = json.loads(self.s3.get_object(
                    Bucket=self.bucket, Key=f"{execution['name']}/manifest.json")["Body"].read())
            except self.s3.exceptions.NoSuchKey:
                log.info("execution %s kept no manifest: the message has no job table", execution["name"])
        subject, body = message(execution, manifest, self.bucket)
        sent = self.sns.publish(TopicArn=self.topic_arn, Subject=subject, Message=body)
        log.info("told %s that %s ended %s", self.topic_arn, execution["name"], execution["status"])
        return {"execution": execution_arn, "status": execution["status"], "message_id": sent["MessageId"],
                "bytes": len(body.encode())}
