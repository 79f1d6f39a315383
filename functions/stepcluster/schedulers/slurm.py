"""Slurm: sbatch, squeue, scontrol (sacct when the cluster keeps accounting), scancel.

Observed on Slurm 22.05 (the local rig) and recorded in tests/fixtures/schedulers/slurm/:

- `squeue -j A,B,...` with several ids reports the ones slurmctld still knows and exits 0, even
  when none of them is known (empty output). With ONE id that slurmctld does not know it exits
  1 with "slurm_load_jobs error: Invalid job id specified" on stderr. Both mean MISSING. Any
  other failure (e.g. "Unable to contact slurm controller") is a SchedulerError, never MISSING.
- Finished jobs stay visible to `squeue -t all` and `scontrol show job` for MinJobAge seconds
  (default 300), then only `sacct` (slurmdbd) knows them.
- `scancel` exits 0 for finished and unknown ids.
"""

from __future__ import annotations

import re
from typing import Sequence

from stepcluster.errors import SchedulerError
from stepcluster.schedulers.base import (
    Category, CommandOutput, JobStatus, Scheduler, check_job_ids, raw_output,
)

# Job state words as printed by `squeue -o %T`, `scontrol show job` (JobState=) and `sacct`
# (State), from squeue(1) "JOB STATE CODES": https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES
# and https://slurm.schedmd.com/job_state_codes.html
STATES: dict[str, Category] = {
    "PENDING": Category.QUEUED,         # PD  awaiting resource allocation
    "CONFIGURING": Category.QUEUED,     # CF  allocated, waiting for nodes to boot; script not started
    "REQUEUED": Category.QUEUED,        # RQ  completing job being requeued
    "REQUEUE_FED": Category.QUEUED,     # RF  requeued by a federation
    "REQUEUE_HOLD": Category.QUEUED,    # RH  requeued and held
    "RESV_DEL_HOLD": Category.QUEUED,   # RD  held because its reservation was deleted
    "RUNNING": Category.RUNNING,        # R   has an allocation
    "COMPLETING": Category.RUNNING,     # CG  finishing; some processes may still be active
    "SUSPENDED": Category.RUNNING,      # S   allocation suspended, CPUs released
    "STOPPED": Category.RUNNING,        # ST  SIGSTOP'ed, keeps its CPUs
    "RESIZING": Category.RUNNING,       # RS  about to change size
    "SIGNALING": Category.RUNNING,      # SI  being signaled
    "STAGE_OUT": Category.RUNNING,      # SO  staging out files (burst buffer)
    "COMPLETED": Category.SUCCEEDED,    # CD  all processes terminated with exit code 0
    "FAILED": Category.FAILED,          # F   non-zero exit code or other failure
    "TIMEOUT": Category.FAILED,         # TO  reached its time limit
    "NODE_FAIL": Category.FAILED,       # NF  a node failed
    "OUT_OF_MEMORY": Category.FAILED,   # OOM
    "BOOT_FAIL": Category.FAILED,       # BF  a node failed to boot
    "DEADLINE": Category.FAILED,        # DL  missed its --deadline
    "PREEMPTED": Category.FAILED,       # PR  preempted (and not requeued)
    "SPECIAL_EXIT": Category.FAILED,    # SE  requeued in a special held state after EpilogSlurmctld
    "REVOKED": Category.FAILED,         # RV  removed here because a federation sibling started it
    "CANCELLED": Category.CANCELLED,    # CA  cancelled by a user or administrator ("CANCELLED by N")
}

_SUBMIT = re.compile(r"^(?P<id>\d+)(?:;(?P<cluster>\S+))?$")
_JOB_ID = re.compile(r"^\d+(?:_\d+)?$")
_STATUS_FORMAT = "%i|%T|%r"
_ROW = re.compile(r"^(?P<id>[0-9_\[\]\-,%]+)\|(?P<state>[^|]*)\|(?P<reason>.*)$")
_UNKNOWN_ID = re.compile(r"Invalid job id specified")
# stderr lines of `scontrol show job` / `sacct` that only mean "I do not know this job"; any
# other complaint (controller or database unreachable...) is an error, not a missing job
_ACCOUNTING_NOT_KNOWN = re.compile(r"Invalid job id specified|accounting storage is disabled", re.IGNORECASE)
# one `scontrol -o show job` record (one line); values are single tokens for these keys
_SC_ID = re.compile(r"(?:^|\s)JobId=(?P<id>\S+)")
_SC_STATE = re.compile(r"\sJobState=(?P<state>\S+)")
_SC_REASON = re.compile(r"\sReason=(?P<reason>\S+)")
_SC_EXIT = re.compile(r"\sExitCode=(?P<code>\d+):(?P<signal>\d+)")
_SACCT_ROW = re.compile(r"^(?P<id>[^|]+)\|(?P<state>[^|]+)\|(?P<code>\d+):(?P<signal>\d+)$")
_BAD_PATH = re.compile(r"[%\\\n]")   # sbatch expands %j, %x... in -o/-e; "\" turns that off




def _reason(text: str | None) -> str | None:
    return None if text in (None, "", "None", "(null)") else text


def _ids(job_ids: Sequence[str]) -> list[str]:
    return check_job_ids(job_ids, _JOB_ID, "Slurm")


class Slurm(Scheduler):
    name = "slurm"
    STATES = STATES

    def probe_argv(self) -> list[str]:
        # sinfo asks slurmctld: exits 1 when it cannot be reached
        return ["sinfo", "--noheader", "--summarize"]

    def submit_argv(self, script: str, *, job_name: str, workdir: str,
                    stdout: str, stderr: str) -> list[str]:
        for path in (stdout, stderr):
            if _BAD_PATH.search(path):
                raise ValueError(f"Slurm would rewrite this output path (%, \\ or newline): {path!r}")
        return ["sbatch", "--parsable", "-J", job_name, "-D", workdir,
                "-o", stdout, "-e", stderr, script]

    def parse_submit(self, out: CommandOutput) -> str:
        lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        matches = [m for m in map(_SUBMIT.match, lines) if m]
        if out.exit_code != 0 or len(matches) != 1:
            raise SchedulerError(f"sbatch did not print one job id: {raw_output(out)}")
        return matches[0].group("id")

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["squeue", "--noheader", "--states=all", "--jobs=" + ",".join(_ids(job_ids)),
                "--format=" + _STATUS_FORMAT]

    def parse_status(self, out: CommandOutput, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        wanted = [str(i) for i in job_ids]
        found: dict[str, JobStatus] = {}
        if out.exit_code != 0 and not (_UNKNOWN_ID.search(out.stderr) and not out.stdout.strip()):
            raise SchedulerError(f"squeue failed: {raw_output(out)}")
        for line in out.stdout.splitlines():
            if not line.strip():
                continue
            m = _ROW.match(line.strip())
            if not m:
                raise SchedulerError(f"unexpected squeue line {line!r}: {raw_output(out)}")
            job_id = m.group("id")
            if job_id in wanted and job_id not in found:
                found[job_id] = self._status(job_id, m.group("state").strip(), _reason(m.group("reason").strip()))
        return {i: found.get(i) or JobStatus(i, Category.MISSING, "") for i in wanted}

    def _status(self, job_id: str, raw_state: str, reason: str | None,
                code: int | None = None, signal: int | None = None) -> JobStatus:
        # "CANCELLED by 1001" (sacct) -> CANCELLED; the raw text is kept
        category = self.categorize(raw_state.split(" ")[0]) if raw_state else Category.UNKNOWN
        if category not in (Category.SUCCEEDED, Category.FAILED, Category.CANCELLED):
            code = signal = None
        elif category == Category.SUCCEEDED and (code or signal):
            category = Category.FAILED   # never call a non-zero exit a success
        return JobStatus(job_id, category, raw_state, exit_code=code,
                         signal=signal or None, reason=reason)

    def accounting_argv(self, job_id: str) -> list[str] | None:
        _ids([job_id])
        # slurmctld's memory first (any cluster), then slurmdbd's (clusters that keep accounting)
        return ["sh", "-c",
                'scontrol --oneliner show job "$1" || '
                'sacct --noheader --allocations --parsable2 --format=JobIDRaw,State,ExitCode --jobs="$1"',
                "sh", job_id]

    def parse_accounting(self, out: CommandOutput, job_id: str) -> JobStatus:
        records = [line for line in out.stdout.splitlines() if line.strip()]
        for line in records:
            m = _SC_ID.search(line)
            if m and m.group("id") == job_id:
                state, reason, code = _SC_STATE.search(line), _SC_REASON.search(line), _SC_EXIT.search(line)
                if not state or not code:
                    raise SchedulerError(f"scontrol record without JobState/ExitCode: {raw_output(out)}")
                return self._status(job_id, state.group("state"), _reason(reason and reason.group("reason")),
                                    int(code.group("code")), int(code.group("signal")))
        rows = [m for m in map(_SACCT_ROW.match, (r.strip() for r in records)) if m and m.group("id") == job_id]
        if rows:   # a reused id (state wiped) gives several rows: the last is the newest
            row = rows[-1]
            return self._status(job_id, row.group("state"), None,
                                int(row.group("code")), int(row.group("signal")))
        if records and not any(_SC_ID.search(r) or "|" in r for r in records):
            raise SchedulerError(f"unexpected accounting output for job {job_id}: {raw_output(out)}")
        unexplained = [line for line in out.stderr.splitlines()
                       if line.strip() and not _ACCOUNTING_NOT_KNOWN.search(line)]
        if out.exit_code != 0 and unexplained:
            raise SchedulerError(f"cannot read Slurm's history of job {job_id}: {raw_output(out)}")
        return JobStatus(job_id, Category.MISSING, "")

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        # scancel exits 0 for finished and unknown ids (observed on 22.05)
        return ["scancel", *_ids(job_ids)]
