"""Torque (PBS): qsub, qstat -f, qdel.

No Torque server can be installed where this project is tested: this adapter follows the
Torque documentation, and tests/fixtures/schedulers/torque/ holds outputs written from it:

- qstat(1B) (Torque): `qstat -f` prints, per job, a "Job Id: 123.server" line then one
  "    name = value" line per attribute (4 spaces), long values continued on lines starting
  with a tab; jobs are separated by a blank line.
- Ids qstat does not know: "qstat: Unknown Job Id 123.server" (Torque 2.x) or
  "qstat: Unknown Job Id Error 123.server" (Torque 4+) on stderr, exit status 153; the other
  ids of the same command are still printed.
- Completed jobs stay as job_state C for the server's keep_completed seconds, then vanish:
  Torque keeps no history reachable with a client command.
- exit_status (Torque Administrator Guide, "Job Exit Status"): the job script's exit code;
  negative values are Torque's own JOB_EXEC_* failures; 256 + N when the job was killed by
  signal N (271 = SIGTERM: what a qdel of a running job, or a walltime kill, leaves).
- Holds (qhold(1B), qstat -f "Hold_Types"): u USER, o OTHER (operator), s SYSTEM, n none; a held
  job is job_state H. pbs_server also puts a SYSTEM hold on a job whose depend= predecessors
  have not finished (set_depend_hold() in src/server/req_register.c: H, substate DEPNHOLD) and
  lifts it by itself; when such a dependency can never be satisfied (afterok on a job that
  failed) the server deletes the dependent job (JOB_DEPEND_OP_DELETE -> job_abt) instead of
  leaving it queued. W (waiting for its qsub -a execution time) starts by itself.
"""

from __future__ import annotations

import re
from typing import Sequence

from stepcluster import resources as res
from stepcluster.directives import OVERRIDDEN, REFUSED, DirectiveSyntax, OptionRule, value_has
from stepcluster.errors import RequestRefused, SchedulerError
from stepcluster.schedulers.base import (
    Category, CommandOutput, JobStatus, Scheduler, check_job_ids, letter_first, qdel_argv,
    raw_output, single_job_id,
)

# job_state letters from qstat(1B) of Torque ("the state of the job"):
# http://docs.adaptivecomputing.com/torque/6-1-2/adminGuide/torque.htm#topics/torque/commands/qstat.htm
STATES: dict[str, Category] = {
    "Q": Category.QUEUED,   # queued, eligible to run or routed
    "H": Category.QUEUED,   # held (user/system hold, or a dependency)
    "W": Category.QUEUED,   # waiting for its execution time (qsub -a)
    "T": Category.QUEUED,   # being moved to a new location, not started
    "R": Category.RUNNING,  # running
    "E": Category.RUNNING,  # exiting after having run
    "S": Category.RUNNING,  # suspended
    # completed after having run: FAILED unless exit_status is 0 (see parse_status), so that
    # a C without a readable exit_status is never taken for a success
    "C": Category.FAILED,
}

# Hold_Types letters that keep a job in H until someone runs qrls (qhold(1B): "A job that has a
# hold is not eligible for execution"). "s" only when the job has no depend= attribute: with one,
# the server's own dependency hold, released when the predecessors end.
BLOCKING_HOLD_TYPES: dict[str, str] = {
    "u": "USER hold (qhold, qsub -h)",
    "o": "OTHER (operator) hold",
    "s": "SYSTEM hold (administrator, or the server) -- unless a depend= attribute explains it",
    "p": "bad password hold (PBS Professional: set after a failed run with a wrong password)",
}

# Torque's own exit codes (JOB_EXEC_* in src/include/job.h; Administrator Guide "Job Exit Status")
JOB_EXEC_CODES: dict[int, str] = {
    -1: "job exec failed, before files, no retry",
    -2: "job exec failed, after files, no retry",
    -3: "job execution failed, do retry",
    -4: "job aborted on MOM initialization",
    -5: "job aborted on MOM init, chkpt, no migrate",
    -6: "job aborted on MOM init, chkpt, ok migrate",
    -7: "job restart failed",
    -8: "exec() of user command failed",
    -9: "could not create/open stdout stderr files",
    -10: "job exceeded a memory limit",
    -11: "job exceeded a walltime limit",
    -12: "job exceeded a CPU time limit",
    -13: "could not create the job's cgroups",
    -14: "prologue failed",
}

_JOB_ID = re.compile(r"^\d+(?:\[\d*\])?(?:\.[A-Za-z0-9][A-Za-z0-9.-]*)?$")
_SUBMIT = re.compile(r"^(?P<id>\d+(?:\[\d*\])?(?:\.[A-Za-z0-9][A-Za-z0-9.-]*)?)$")
_JOB_HEADER = re.compile(r"^Job Id:\s*(?P<id>\S+)\s*$")
_ATTRIBUTE = re.compile(r"^ {4}(?P<key>[A-Za-z_][\w.]*) = ?(?P<value>.*)$")
_UNKNOWN = re.compile(r"Unknown Job Id(?: Error)?\s+(?P<id>\S+)"
                      r"|(?P<fid>\S+) Job has finished")   # PBS Pro's wording for ended jobs
_INT = re.compile(r"^-?\d+$")
_BAD_OUTPUT_PATH = re.compile(r"[:\n]")   # -o/-e take [hostname:]path
_CANCEL_OK = r"Unknown Job Id|invalid state for job|Request invalid for state of job|Job has finished"



def _seq(job_id: str) -> str:
    """The sequence number: qsub may print 123.head while qstat says 123.head.example.com."""
    return job_id.split(".", 1)[0]




def parse_full(text: str) -> list[tuple[str, dict[str, str]]]:
    """`qstat -f` output -> [(job id, {attribute: value})] (keys as printed)."""
    jobs: list[tuple[str, dict[str, str]]] = []
    attrs: dict[str, str] | None = None
    key = None
    for line in text.splitlines():
        header = _JOB_HEADER.fullmatch(line)
        if header:
            attrs, key = {}, None
            jobs.append((header.group("id"), attrs))
            continue
        if not line.strip():
            key = None
            continue
        if attrs is None:
            raise SchedulerError(f"qstat -f output does not start with 'Job Id:': {line!r}", scheduler="torque")
        m = _ATTRIBUTE.fullmatch(line)
        if m:
            key = m.group("key")
            attrs[key] = m.group("value").strip()
        elif key is not None and line[:1] in ("\t", " "):
            attrs[key] += line.strip()          # continuation of a long value
        else:
            raise SchedulerError(f"unexpected qstat -f line {line!r}", scheduler="torque")
    return jobs


def _ids(job_ids: Sequence[str]) -> list[str]:
    return check_job_ids(job_ids, _JOB_ID, "torque", "Torque")


def blocked_reason(state: str, attrs: dict[str, str]) -> str | None:
    """Why a queued job cannot start by itself ("job_state H (Hold_Types u)"); None otherwise."""
    if state != "H":
        return None
    hold_types = (attrs.get("Hold_Types") or "").strip()
    letters = set(hold_types) & set(BLOCKING_HOLD_TYPES)
    if letters == {"s"} and (attrs.get("depend") or "").strip():
        return None     # the server's dependency hold: lifted when the predecessors end
    if letters:
        return f"job_state H (Hold_Types {hold_types})"
    return None


# -- options in scripts and in scheduler_options ---------------------------------------------------
# qsub(1B) (Torque): directives are lines starting with "#PBS" (or $PBS_DPREFIX) before the first
# executable line; "qsub will stop parsing directives at the first executable line" and options on
# the command line take precedence. Options are getopt short options ("-l walltime=1:00:00").
DIRECTIVES = DirectiveSyntax("#PBS", whole_file=False, getopt=True, short_flags="hIVxzfnX",
                             documented="qsub(1B) Torque, 'Script Processing'")
OPTION_RULES = (
    OptionRule(("-o",), OVERRIDDEN, "stdout goes to the job's folder, where stepcluster keeps it"),
    OptionRule(("-e",), OVERRIDDEN, "stderr goes to the job's folder, where stepcluster keeps it"),
    OptionRule(("-j",), OVERRIDDEN, "stdout and stderr are kept apart (stderr's tail explains a failure)"),
    OptionRule(("-k",), OVERRIDDEN, "the job's stdout and stderr go straight to its folder"),
    OptionRule(("-N",), OVERRIDDEN, "the job's name on the scheduler is how stepcluster finds it again"),
    OptionRule(("-d", "-w"), OVERRIDDEN, "the job starts in its staged files' folder ($STEPCLUSTER_SOURCE)"),
    OptionRule(("-S",), OVERRIDDEN, "stepcluster's wrapper runs under bash; the handler's own #! line "
               "still chooses the handler's interpreter"),
    OptionRule(("-W",), REFUSED, "the run's [order] decides when a job starts, and qsub must return at once",
               when=value_has(r"(^|,)\s*(depend|block)\s*=")),
    OptionRule(("-t", "-J"), REFUSED, "an array is the config's `array` key (stepcluster keeps each task's record)"),
    OptionRule(("-h",), REFUSED, "a held job never starts by itself", takes_value=False),
    OptionRule(("-I",), REFUSED, "an interactive job has no script to run", takes_value=False),
    OptionRule(("-x",), REFUSED, "the wrapper is the job's script", takes_value=False),
    OptionRule(("-F",), REFUSED, "the wrapper does not pass arguments on: set them in the handler"),
    OptionRule(("-D",), REFUSED, "a changed root folder hides the job's folder from the wrapper"),
    OptionRule(("-C",), REFUSED, "the directive prefix is #PBS"),
)
RESOURCE_OPTIONS = {"queue": ("-q",), "array": ("-t", "-J")}
#: pbs_mom's words in the job's stderr when it kills a job over a limit (Torque, src/resmom/
#: mom_main.c: "=>> PBS: job killed: walltime 65 exceeded limit 60", "... mem 1052672kb exceeded
#: limit 524288kb"); no Torque server runs here, so only the documented text is matched.
LIMIT_MESSAGES = (
    (re.compile(r"PBS: job killed: (?P<what>walltime|mem|vmem|pmem|cput) (?P<used>\S+) exceeded limit (?P<limit>\S+)"),
     lambda m, r: f"{'time' if m.group('what') in ('walltime', 'cput') else 'memory'} limit "
                  f"{m.group('what')}={m.group('limit')} (Torque: {m.group(0)!r})"),
)


class Torque(Scheduler):
    name = "torque"
    STATES = STATES
    # qsub(1B)/qstat(1B): "cannot connect to server HOST (errno=111) Connection refused"
    UNAVAILABLE = re.compile(r"cannot connect to server")

    def probe_argv(self) -> list[str]:
        return ["qstat", "-B"]   # the server's status: fails when pbs_server does not answer

    DIRECTIVES = DIRECTIVES
    OPTION_RULES = OPTION_RULES
    RESOURCE_OPTIONS = RESOURCE_OPTIONS
    LIMIT_MESSAGES = LIMIT_MESSAGES

    def submit_argv(self, script: str, *, job_name: str, workdir: str,
                    stdout: str, stderr: str, request: Sequence[str] = ()) -> list[str]:
        for path in (stdout, stderr):
            if _BAD_OUTPUT_PATH.search(path):
                raise SchedulerError(f"Torque would misread this output path (: or newline): {path!r}",
                                     scheduler=self.name)
        return ["qsub", *request, "-N", letter_first(job_name), "-d", workdir,
                "-o", stdout, "-e", stderr, "-j", "n", "-S", "/bin/bash", script]

    def resource_options(self, resources: res.Resources) -> list[str]:
        r, limits = resources, []
        if r.nodes or r.tasks or r.cpus_per_task:
            # -l nodes=N:ppn=M: M processors on each of N nodes; one task per node by default,
            # as Slurm's -N without -n
            nodes = r.nodes or 1
            slots = (r.tasks or nodes) * (r.cpus_per_task or 1)
            if slots % nodes:
                raise RequestRefused([
                    f"Torque asks for the same processors on every node (nodes=N:ppn=M): {slots} "
                    f"CPUs ({r.tasks or nodes} tasks x {r.cpus_per_task or 1}) do not divide evenly over "
                    f"{nodes} nodes"])
            limits.append(f"nodes={nodes}:ppn={slots // nodes}")
        if r.memory_kib:
            limits.append(f"mem={r.memory_kib * (r.nodes or 1)}kb")   # Torque's mem is the job's total
        if r.time_limit:
            limits.append(f"walltime={res.hms(r.time_limit)}")
        argv = ["-l", ",".join(limits)] if limits else []
        if r.queue:
            argv += ["-q", r.queue]
        if r.array:
            # qsub(1B) Torque: "-t array_request": indices and ranges, "%N" slot limit; no steps
            parts, cap = res.array_parts(r.array)
            if any(step != 1 for _, _, step in parts):
                raise RequestRefused([f"Torque's -t takes no step: array = {r.array} cannot be expressed; "
                                      "list the indices instead"])
            argv += ["-t", ",".join(f"{a}-{b}" if b != a else str(a) for a, b, _ in parts)
                     + (f"%{cap}" if cap else "")]
        return argv

    def parse_submit(self, out: CommandOutput) -> str:
        return single_job_id(out, _SUBMIT, "qsub", self.name)

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["qstat", "-f", *_ids(job_ids)]

    def parse_status(self, out: CommandOutput, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        wanted = [str(i) for i in job_ids]
        asked = set(wanted)      # (a look at 10,000 jobs: a list would make this quadratic)
        unknown_lines = [line for line in out.stderr.splitlines() if _UNKNOWN.search(line)]
        other_errors = [line for line in out.stderr.splitlines()
                        if line.strip() and not _UNKNOWN.search(line)]
        if out.exit_code != 0 and (other_errors or not unknown_lines):
            raise SchedulerError(f"qstat -f failed: {raw_output(out)}", scheduler=self.name, output=out,
                                 job_ids=wanted)
        try:
            jobs = parse_full(out.stdout)
        except SchedulerError as exc:
            raise SchedulerError(f"{exc}: {raw_output(out)}", scheduler=self.name, output=out,
                                 job_ids=wanted) from None
        by_seq = {_seq(i): i for i in wanted}
        found: dict[str, JobStatus] = {}
        for printed_id, attrs in jobs:
            job_id = printed_id if printed_id in asked else by_seq.get(_seq(printed_id))
            if job_id is None or job_id in found:
                continue
            if "job_state" not in attrs:
                raise SchedulerError(f"qstat -f record of {printed_id} has no job_state: {raw_output(out)}",
                                     scheduler=self.name, output=out, job_ids=wanted)
            found[job_id] = self._status(job_id, attrs)
        return {i: found.get(i) or JobStatus(i, Category.MISSING, "") for i in wanted}

    def _status(self, job_id: str, attrs: dict[str, str]) -> JobStatus:
        state = attrs["job_state"].strip()
        category = self.categorize(state)
        comment = attrs.get("comment") or None
        if state != "C":
            blocked = blocked_reason(state, attrs) if category == Category.QUEUED else None
            return JobStatus(job_id, category, state, reason=comment, blocked=blocked)
        # Torque spells it exit_status; PBS Pro Exit_status
        text = attrs.get("exit_status", attrs.get("Exit_status"))
        if text is None or not _INT.fullmatch(text.strip()):
            return JobStatus(job_id, Category.FAILED, state,
                             reason=comment or f"completed without a readable exit_status ({text!r})")
        code = int(text)
        if code == 0:
            return JobStatus(job_id, Category.SUCCEEDED, state, exit_code=0)
        if code < 0:
            why = JOB_EXEC_CODES.get(code, "Torque could not run the job")
            return JobStatus(job_id, Category.FAILED, state, exit_code=code,
                             reason=f"exit_status {code}: {why}" + (f"; {comment}" if comment else ""))
        signal = code - 256 if code > 256 else None
        return JobStatus(job_id, Category.FAILED, state, exit_code=code, signal=signal, reason=comment)

    # accounting_argv: none. A job gone from qstat has no history a client can read.

    def recover_argv(self, job_name: str) -> list[str] | None:
        # every job the server knows, Job_Name among the attributes; completed ones for
        # keep_completed seconds (Torque keeps no history a client can read after that)
        return ["qstat", "-f"]

    def parse_recover(self, out: CommandOutput, job_name: str) -> list[str]:
        name = letter_first(job_name)
        if out.exit_code != 0 or out.stderr.strip():
            raise SchedulerError(f"qstat -f cannot say whether job {name!r} exists: {raw_output(out)}",
                                 scheduler=self.name, output=out)
        try:
            jobs = parse_full(out.stdout)
        except SchedulerError as exc:
            raise SchedulerError(f"{exc}: {raw_output(out)}", scheduler=self.name, output=out) from None
        ids = [job_id for job_id, attrs in jobs if attrs.get("Job_Name") == name]
        return sorted(set(ids), key=ids.index)

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        # qdel fails for ids already gone (Unknown Job Id) or completed (invalid state): fine here
        return qdel_argv(_ids(job_ids), _CANCEL_OK)
