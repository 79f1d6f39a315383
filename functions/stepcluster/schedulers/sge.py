"""(Son of) Grid Engine: qsub, qstat, qacct, qdel.

Observed on Son of Grid Engine 8.1.9 (the local rig) and recorded in
tests/fixtures/schedulers/sge/:

- qsub refuses job names that start with a digit ('denied: "1x" is not a valid object name
  (cannot start with a digit)'); sge_types(5) also forbids / : @ \\ * ? in names. Job names
  reaching this adapter match [A-Za-z0-9_-]{1,64}, so names not starting with a letter get a
  "j" prefix (Torque wants a leading letter too; one rule for both).
- `qstat` prints nothing about ids it does not know; a job leaves qstat when it ends and its
  record appears in `qacct -j ID` about a second later ("error: job id N not found", exit 1,
  until then). `qstat -j` does not show the state word, but is the only place that shows why
  a job is in error state (the "error reason" line).
- `qdel` of a finished or unknown id exits 1 ('denied: job "5" does not exist').
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Sequence

from stepcluster.errors import SchedulerError
from stepcluster.schedulers.base import (
    Category, CommandOutput, JobStatus, Scheduler, check_job_ids, letter_first, qdel_argv, raw_output,
)

# Job state words of `qstat` (column "state", or <state> in -xml), from sge_status(5)
# ("Job state" table) and qstat(1) OUTPUT FORMATS (man pages of gridengine 8.1.9):
# d(eletion) E(rror) h(old) q(ueued) r(unning) R(estarted) s/S/T (suspended by qmod / by queue
# suspension / by a suspend threshold) t(ransferring) w(aiting) z(ombie).
STATES: dict[str, Category] = {
    # pending
    "qw": Category.QUEUED, "Rq": Category.QUEUED,
    "hqw": Category.QUEUED,        # held (user/operator/system hold or -hold_jid dependency)
    "hRwq": Category.QUEUED,       # held, re-queued
    # running / transferring
    "r": Category.RUNNING, "hr": Category.RUNNING, "t": Category.RUNNING,
    "Rr": Category.RUNNING, "Rt": Category.RUNNING,
    # suspended: started, and resumes by itself or by qmod -usj
    "s": Category.RUNNING, "ts": Category.RUNNING,
    "S": Category.RUNNING, "tS": Category.RUNNING,
    "T": Category.RUNNING, "tT": Category.RUNNING,
    "Rs": Category.RUNNING, "Rts": Category.RUNNING, "RS": Category.RUNNING,
    "RtS": Category.RUNNING, "RT": Category.RUNNING, "RtT": Category.RUNNING,
    # error: a pending job that could not be started; it stays there until someone clears it
    # with `qmod -cj`, so for the workflow it has failed (the reason comes from `qstat -j`)
    "Eqw": Category.FAILED, "Ehqw": Category.FAILED, "EhRqw": Category.FAILED,
    # deletion in progress (qdel ran): the job is being killed and cannot finish normally any
    # more. Counted as CANCELLED at once: waiting for it to vanish could take for ever when its
    # execd is unreachable (jobs stuck in "dr" are a known Grid Engine sight).
    "dr": Category.CANCELLED, "dt": Category.CANCELLED, "dRr": Category.CANCELLED,
    "dRt": Category.CANCELLED, "ds": Category.CANCELLED, "dS": Category.CANCELLED,
    "dT": Category.CANCELLED, "dRs": Category.CANCELLED, "dRS": Category.CANCELLED,
    "dRT": Category.CANCELLED,
    # zombie (finished; only listed with `qstat -s z`, which this adapter does not use): its
    # result is in qacct, so it is treated like a job gone from qstat
    "z": Category.MISSING,
}

_JOB_ID = re.compile(r"^\d+$")
_SUBMIT = re.compile(r"^(?P<id>\d+)(?:\.(?P<tasks>\d+-\d+:\d+))?$")   # -terse; arrays: 12.1-5:1
_MARK = "@@stepcluster-qstat-j"
_JOB_NUMBER = re.compile(r"^job_number:\s+(?P<id>\d+)\s*$")
_ERROR_REASON = re.compile(r"^error reason\s+\d+:\s+(?:\d\d/\d\d/\d{4} \d\d:\d\d:\d\d \[[^\]]*\]:\s+)?(?P<msg>.*?)\s*$")
_QACCT_LINE = re.compile(r"^(?P<key>[a-z_]+)\s+(?P<value>.*?)\s*$")
_QACCT_FAILED = re.compile(r"^(?P<code>\d+)(?:\s*:\s*(?P<text>.*))?$")
_QACCT_EXIT = re.compile(r"^(?P<code>-?\d+)")
# not (yet) in the accounting file; or no accounting file yet (no job has finished since install)
_QACCT_NOT_YET = re.compile(r"job id \S+ not found|no jobs running since startup|No such file or directory",
                            re.IGNORECASE)
_BAD_OUTPUT_PATH = re.compile(r"[:,$\n]")   # -o/-e take [[host]:]path,... and expand $JOB_ID & co
_CANCEL_OK = r"does not exist|has registered the job|has deleted job|already in deletion|is already"





def _ids(job_ids: Sequence[str]) -> list[str]:
    return check_job_ids(job_ids, _JOB_ID, "Grid Engine")


class SGE(Scheduler):
    name = "sge"
    STATES = STATES

    def probe_argv(self) -> list[str]:
        # asks sge_qmaster (exit 1 when unreachable) and lists the cluster queues: cheap
        return ["qconf", "-sql"]

    def submit_argv(self, script: str, *, job_name: str, workdir: str,
                    stdout: str, stderr: str) -> list[str]:
        for path in (stdout, stderr):
            if _BAD_OUTPUT_PATH.search(path):
                raise ValueError(f"Grid Engine would misread this output path (: , $ or newline): {path!r}")
        return ["qsub", "-terse", "-N", letter_first(job_name), "-wd", workdir,
                "-o", stdout, "-e", stderr, "-S", "/bin/bash", script]

    def parse_submit(self, out: CommandOutput) -> str:
        lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        matches = [m for m in map(_SUBMIT.match, lines) if m]
        if out.exit_code != 0 or len(matches) != 1:
            raise SchedulerError(f"qsub -terse did not print one job id: {raw_output(out)}")
        return matches[0].group("id")

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        ids = ",".join(_ids(job_ids))
        # One command: the job table as XML (every user: ids are what we filter on); then, only
        # when some job is in an E(rror) state, the "error reason" lines of `qstat -j`.
        script = (
            'out=$(qstat -xml -u "*") || { rc=$?; printf "%s\\n" "$out"; exit $rc; }\n'
            'printf "%s\\n" "$out"\n'
            'if printf "%s\\n" "$out" | grep -q "<state>[^<]*E"; then\n'
            f'  echo {_MARK}\n'
            '  qstat -j "$1" 2>&1 | grep -E "^(job_number|error reason)"\n'
            'fi\n'
            'exit 0')
        return ["sh", "-c", script, "sh", ids]

    def parse_status(self, out: CommandOutput, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        wanted = [str(i) for i in job_ids]
        if out.exit_code != 0:
            raise SchedulerError(f"qstat failed: {raw_output(out)}")
        xml_text, _, details = out.stdout.partition(_MARK)
        try:
            root = ET.fromstring(xml_text.strip())
        except ET.ParseError as exc:
            raise SchedulerError(f"qstat -xml printed no valid XML ({exc}): {raw_output(out)}") from None
        if root.tag != "job_info":
            raise SchedulerError(f"unexpected qstat -xml document <{root.tag}>: {raw_output(out)}")
        reasons = _error_reasons(details)
        found: dict[str, JobStatus] = {}
        for job in root.iter("job_list"):
            job_id = (job.findtext("JB_job_number") or "").strip()
            state = job.findtext("state")
            if not job_id or state is None:
                raise SchedulerError(f"qstat -xml job entry without number or state: {raw_output(out)}")
            # array jobs list one entry per task group: the first one is kept
            if job_id in wanted and job_id not in found:
                state = state.strip()
                category = self.categorize(state)
                reason = None
                if category == Category.FAILED:
                    reason = reasons.get(job_id) or "job in error state (see qstat -j)"
                found[job_id] = JobStatus(job_id, category, state, reason=reason)
        return {i: found.get(i) or JobStatus(i, Category.MISSING, "") for i in wanted}

    def accounting_argv(self, job_id: str) -> list[str] | None:
        return ["qacct", "-j", _ids([job_id])[0]]

    def parse_accounting(self, out: CommandOutput, job_id: str) -> JobStatus:
        if out.exit_code != 0 or not out.stdout.strip():
            if _QACCT_NOT_YET.search(out.stderr + out.stdout) or (out.exit_code == 0 and not out.stdout.strip()):
                return JobStatus(job_id, Category.MISSING, "")
            raise SchedulerError(f"qacct failed for job {job_id}: {raw_output(out)}")
        records, current = [], None
        for line in out.stdout.splitlines():
            if line.startswith("=========="):
                current = {}
                records.append(current)
                continue
            m = _QACCT_LINE.match(line)
            if m and current is not None:
                current.setdefault(m.group("key"), m.group("value"))
        mine = [r for r in records if r.get("jobnumber") == job_id]
        if not mine:
            raise SchedulerError(f"qacct printed no record of job {job_id}: {raw_output(out)}")
        record = mine[-1]   # several records: array tasks, or an id reused; the last is newest
        failed = _QACCT_FAILED.match(record.get("failed", ""))
        exit_status = _QACCT_EXIT.match(record.get("exit_status", ""))
        if not failed or not exit_status:
            raise SchedulerError(f"qacct record of job {job_id} lacks failed/exit_status: {raw_output(out)}")
        failed_code, code = int(failed.group("code")), int(exit_status.group("code"))
        raw = f"failed {failed_code}"
        if failed_code == 0 and code == 0:
            return JobStatus(job_id, Category.SUCCEEDED, raw, exit_code=0)
        reason = None
        if failed_code != 0:
            reason = f"failed {failed_code}: {failed.group('text') or 'see sge_status(5)'}".strip()
        # a job killed by a signal has exit_status 128 + signal; only trusted when Grid Engine
        # itself reports a failure (a script may well `exit 137`)
        signal = code - 128 if failed_code != 0 and code > 128 else None
        return JobStatus(job_id, Category.FAILED, raw, exit_code=code, signal=signal, reason=reason)

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        # qdel exits 1 when an id is already gone: that is not an error here, anything else is
        return qdel_argv(_ids(job_ids), _CANCEL_OK)


def _error_reasons(text: str) -> dict[str, str]:
    """job id -> first "error reason" message, from `qstat -j` lines."""
    reasons: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = _JOB_NUMBER.match(line)
        if m:
            current = m.group("id")
            continue
        m = _ERROR_REASON.match(line)
        if m and current and current not in reasons:
            reasons[current] = m.group("msg")
    return reasons
