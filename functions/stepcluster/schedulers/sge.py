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
- Impossible requests: qsub REFUSES at submit (exit 1, "Unable to run job: ...") an unknown
  queue (`-q nosuchqueue`), parallel environment (`-pe nonexistent 2`), resource name
  (`-l nosuchres=1`) or host (`-l hostname=nosuchhost`). It ACCEPTS (default `-w n`: no
  validation) requests no host can meet: `-l mem_free=1000T`, `-l arch=sparc`,
  `-l qname=nosuch` stay qw for ever; `-l h_vmem=10000G` simply runs (all.q has h_vmem
  INFINITY). Only `qstat -j` says why, in its "scheduling info" lines, and only when
  sched_conf(5) schedd_job_info is true (the rig sets it; SGE installs default to false, then
  the line reads "(Collecting of scheduler job information is turned off)").
- hqw means held OR waiting for -hold_jid predecessors (qstat(1)); `qstat -s hu|ho|hs|hj` tell
  them apart. A -hold_jid successor runs once its predecessor ended, whatever its exit status
  (rig: hold_jid on a job that exited 3 ran), so a dependency never blocks for ever.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Sequence

from stepcluster import resources as res
from stepcluster.directives import OVERRIDDEN, REFUSED, DirectiveSyntax, OptionRule, value_is
from stepcluster.errors import RequestRefused, SchedulerError
from stepcluster.schedulers.base import (
    Category, CommandOutput, JobStatus, Scheduler, check_job_ids, letter_first, qdel_argv,
    raw_output, single_job_id,
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

# -- jobs that cannot start by themselves -----------------------------------------------------------
# Holds that only qrls (or an operator/manager) lifts: qstat(1) -s "hu/ho/hs: user/operator/system
# hold" (qhold, qalter -h, qsub -h). Not blocking: hj (-hold_jid predecessors), hd (array
# dependency), ha (qsub -a start time): they end by themselves.
BLOCKING_HOLDS: dict[str, str] = {"hu": "user", "ho": "operator", "hs": "system"}
#: A job left in `t` (transferring) has been sent to an execution host that never took it
#: (rig: sge_execd stopped, the job stays `t` and qstat -f shows its queue `au` once the load
#: reports stop). A transfer takes a second; the blocked timeout is far longer.
STUCK_TRANSFERRING = "transferring (t) to an execution host that has not started it (is its sge_execd down?)"

# "scheduling info" lines of `qstat -j` (text: source/libs/sched/msg_schedd.h of Son of Grid
# Engine) that mean a job can NEVER be dispatched to the queue/host the line is about, whatever
# other jobs do. A job is blocked only when EVERY line about it is one of these: one line about a
# full, suspended, disabled or unreachable queue instance, a consumable, a changing load value,
# a hold, a dependency, a start time or a limit shared with other jobs means it may still run.
# "it offers only XY:attr=value": qstat(1) -F format: X = g(lobal) h(ost) q(ueue); Y =
# l (load value), L (scaled load value), c (consumable), f ("a fixed availability definition
# derived from a non-consumable complex attribute or a fixed resource limit").
_STATIC_LOAD_VALUES = "arch|num_proc|mem_total|swap_total|virtual_total|m_topology|m_socket|m_core|m_thread"
BLOCKED_SCHEDULING_INFO: dict[str, str] = {
    r'^\(-l [^)]*\) cannot run (?:at host "[^"]*"|in queue "[^"]*"|globally) because it offers only [gqh]f:':
        "CANNOTRUNATHOST/INQUEUE/GLOBALLY with a fixed attribute or resource limit (rig: -l qname=nosuch)",
    rf'^\(-l [^)]*\) cannot run (?:at host "[^"]*"|in queue "[^"]*"|globally) because it offers only [gqh][lL]:(?:{_STATIC_LOAD_VALUES})=':
        "a static load value (load_parameters(5)): a host's arch or size does not change (rig: -l arch=sparc)",
    r'^\(-l [^)]*\) cannot run .* because job requests (?:unknown|non requestable) resource':
        "MSG_SCHEDD_JOBREQUESTSUNKOWNRESOURCE_S / JOBREQUESTSNONREQUESTABLERESOURCE",
    r'^cannot run in queue "[^"]*" because it is not contained in its hard queue list \(-q\)$':
        "MSG_SCHEDD_INFO_NOTINHARDQUEUELST_S",
    r'^has no permission for .+ "[^"]*"$': "MSG_SCHEDD_INFO_HASNOPERMISSION_SS (access lists)",
    r'^\((?:project [^)]*|no project)\) does not have the correct project to run in ':
        "MSG_SCHEDD_INFO_HASINCORRECTPRJ_SSS / HASNOPRJ_S",
    r'^\(project [^)]*\) is not allowed to run in .* based on the excluded project list$':
        "MSG_SCHEDD_INFO_EXCLPRJ_SSS",
    r'^cannot run in queue instance "[^"]*" because queues are non requestable$':
        "MSG_SCHEDD_INFO_QUEUENOTREQUESTABLE_S",
    r'^cannot run in queue instance "[^"]*" because (?:it is not of (?:parallel type|type checkpointing|type batch)|the job is not parallel|ckpt object "[^"]*" is not in ckpt list of queue)$':
        "MSG_SCHEDD_INFO_NOTPARALLELQUEUE_S / NOTACKPTQUEUE_SS / NOTASERIALQUEUE_S / NOTPARALLELJOB_S / NOTINQUEUELSTOFCKPT_SS",
    r'^cannot run in queue "[^"]*" because PE "[^"]*" is not in pe list$': "MSG_SCHEDD_INFO_NOTINQUEUELSTOFPE_SS",
    r'^cannot run in queue instance "[^"]*" because it has "0" slots$': "MSG_SCHEDD_INFO_NOSLOTSINQUEUE_S",
    r"^does not request (?:globally )?'forced' resource ": "MSG_SCHEDD_INFO_NOTREQFORCEDRES_SS / NOFORCEDRES_SS / NOGLOBFORCEDRES_SS",
    r'^cannot run because requested ckpt object not found$': "MSG_SCHEDD_INFO_CKPTNOTFOUND_",
    r'^cannot run because no access to pe "[^"]*"$': "MSG_SCHEDD_INFO_NOACCESSTOPE_S",
    r'^cannot run because total slots of pe "[^"]*" not in range of job$': "MSG_SCHEDD_INFO_TOTALPESLOTSNOTINRANGE_S",
    r'^pe "[^"]*" dropped because allocation rule is not suitable$': "MSG_SCHEDD_INFO_PEALLOCRULE_S",
    r'^no matching pe found$': "MSG_SCHEDD_INFO_NOPEMATCH_",
}
_BLOCKED_INFO = [re.compile(pattern) for pattern in BLOCKED_SCHEDULING_INFO]
# lines that carry no reason at all
_NO_INFO = re.compile(r"^\((?:Collecting of scheduler job information is turned off|Scheduler job information not "
                      r"available for every job)\b|^there are no messages available$", re.IGNORECASE)

_JOB_ID = re.compile(r"^\d+$")
_SUBMIT = re.compile(r"^(?P<id>\d+)(?:\.(?P<tasks>\d+-\d+:\d+))?$")   # -terse; arrays: 12.1-5:1
_MARK = "@@stepcluster-qstat-j"              # then: job_number / error reason / scheduling info lines
_HOLD_MARK = "@@stepcluster-qstat-s"         # "@@stepcluster-qstat-s hu", then one job id a line
_SECTION = re.compile(r"^(@@stepcluster-qstat-(?:j|s [a-z]+))[ \t]*$", re.MULTILINE)
_SCHED_INFO = re.compile(r"^scheduling info:\s*(?P<msg>.*?)\s*$")
_JOB_NUMBER = re.compile(r"^job_number:\s+(?P<id>\d+)\s*$")
_ERROR_REASON = re.compile(r"^error reason\s+\d+:\s+(?:\d\d/\d\d/\d{4} \d\d:\d\d:\d\d \[[^\]]*\]:\s+)?(?P<msg>.*?)\s*$")
_QACCT_LINE = re.compile(r"^(?P<key>[a-z_]+)\s+(?P<value>.*?)\s*$")
_QACCT_FAILED = re.compile(r"^(?P<code>\d+)(?:\s*:\s*(?P<text>.*))?$")
_QACCT_EXIT = re.compile(r"^(?P<code>-?\d+)")
# not (yet) in the accounting file; or no accounting file yet (no job has finished since install)
_QACCT_NOT_YET = re.compile(r"job id \S+ not found|no jobs running since startup|No such file or directory",
                            re.IGNORECASE)
_BAD_OUTPUT_PATH = re.compile(r"[:,$\n]")   # -o/-e take [[host]:]path,... and expand $JOB_ID & co
_RECOVER_MARK = "@@stepcluster-qacct"
_CANCEL_OK = r"does not exist|has registered the job|has deleted job|already in deletion|is already"





# -- options in scripts and in scheduler_options ---------------------------------------------------
# qsub(1) (8.1.9): "If the first two characters of a script line either match '#$' or are equal
# to the prefix string defined with the -C option ... the line is parsed for embedded command
# flags": every such line of the script, not only a header; then "the command line can be used to
# override the embedded flags". Options are whole words ("-sync y"): no getopt bundling.
DIRECTIVES = DirectiveSyntax("#$", whole_file=True, getopt=False, documented="qsub(1) DESCRIPTION")
OPTION_RULES = (
    OptionRule(("-o",), OVERRIDDEN, "stdout goes to the job's folder, where stepcluster keeps it"),
    OptionRule(("-e",), OVERRIDDEN, "stderr goes to the job's folder, where stepcluster keeps it"),
    OptionRule(("-j",), OVERRIDDEN, "stdout and stderr are kept apart (stderr's tail explains a failure)"),
    OptionRule(("-N",), OVERRIDDEN, "the job's name on the scheduler is how stepcluster finds it again"),
    OptionRule(("-wd",), OVERRIDDEN, "the job starts in its staged files' folder ($STEPCLUSTER_SOURCE)"),
    OptionRule(("-cwd",), OVERRIDDEN, "the job starts in its staged files' folder ($STEPCLUSTER_SOURCE)",
               takes_value=False),
    OptionRule(("-S",), OVERRIDDEN, "stepcluster's wrapper runs under bash; the handler's own #! line "
               "still chooses the handler's interpreter"),
    OptionRule(("-sync",), REFUSED, "qsub would not return until the job ends: the run needs the job id at once",
               when=value_is(r"y(es)?")),
    OptionRule(("-hold_jid", "-hold_jid_ad"), REFUSED, "the run's [order] decides when a job starts"),
    OptionRule(("-t", "-tc"), REFUSED, "an array is the config's `array` key (stepcluster keeps each task's record)"),
    OptionRule(("-h",), REFUSED, "a held job never starts by itself", takes_value=False),
    OptionRule(("-b",), REFUSED, "the wrapper is a script: -b y would run it as a binary",
               when=value_is(r"y(es)?")),
    OptionRule(("-C",), REFUSED, "the directive prefix is #$"),
    OptionRule(("-@",), REFUSED, "an option file would hide options from these checks"),
)
#: h_vmem is set as the job's virtual-memory ulimit (rig: `-pe smp 2 -l h_vmem=100M` gives
#: `ulimit -v` 204800, per slot times slots), so a job past it is not killed: its allocation fails
#: and the program says so in its own words, then exits with its own code.
LIMIT_MESSAGES = (
    (re.compile(r"MemoryError|Cannot allocate memory|std::bad_alloc|[Oo]ut of memory"),
     lambda m, r: ("memory limit " + (f"h_vmem={res.memory_text(res.ceil_div(r.memory_kib, r.slots), units='GMK')} "
                                      "per slot" if r.memory_kib else "h_vmem")
                   + f" (Grid Engine sets it as the job's virtual-memory ulimit: the allocation failed, {m.group(0)!r})")),
)
#: qacct's `failed` codes that mean a limit (sge_status(5) / the execd's failure codes; rig: an
#: h_rt kill is "failed 37 : qmaster enforced h_rt, h_cpu, or h_vmem limit", exit_status 137)
LIMIT_FAILURES = {37: "qmaster enforced h_rt, h_cpu, or h_vmem limit"}
_CATEGORY_LIMIT = re.compile(r"\b(?P<key>h_rt|h_cpu|h_vmem)=(?P<value>[^,\s]+)")
RESOURCE_OPTIONS = {
    "tasks": ("-pe",), "cpus_per_task": ("-pe",), "queue": ("-q",), "array": ("-t", "-tc"),
}


def _ids(job_ids: Sequence[str]) -> list[str]:
    return check_job_ids(job_ids, _JOB_ID, "sge", "Grid Engine")


def _limit_failure(failed_code: int, record: dict) -> str | None:
    """Which limit a qacct record's `failed` code means: the one of the job's h_rt / h_cpu /
    h_vmem requests (its `category`) that the wall clock or memory use reached, else all of them."""
    words = LIMIT_FAILURES.get(failed_code)
    if not words:
        return None
    asked = {m.group("key"): m.group("value") for m in _CATEGORY_LIMIT.finditer(record.get("category", ""))}
    wallclock = re.match(r"\d+", record.get("ru_wallclock", ""))
    if "h_rt" in asked and asked["h_rt"].isdigit() and wallclock and int(wallclock.group(0)) >= int(asked["h_rt"]):
        which = f"time limit h_rt={asked['h_rt']}"
    elif len(asked) == 1:
        ((key, value),) = asked.items()
        which = f"{'memory' if key == 'h_vmem' else 'time'} limit {key}={value}"
    else:
        which = "limit " + (", ".join(f"{k}={v}" for k, v in asked.items()) or "(h_rt, h_cpu or h_vmem)")
    return f"{which} (Grid Engine: failed {failed_code}: {words})"


class SGE(Scheduler):
    name = "sge"
    STATES = STATES
    # rig, sge_qmaster stopped: "error: commlib error: got select error (Connection refused)" and
    # "unable to send message to qmaster using port 6444 on host ...: got send error"
    UNAVAILABLE = re.compile(r"unable to (?:send message to|contact) qmaster|commlib error: (?:got select error|can't connect)",
                             re.IGNORECASE)

    def probe_argv(self) -> list[str]:
        # asks sge_qmaster (exit 1 when unreachable) and lists the cluster queues: cheap
        return ["qconf", "-sql"]

    DIRECTIVES = DIRECTIVES
    OPTION_RULES = OPTION_RULES
    RESOURCE_OPTIONS = RESOURCE_OPTIONS
    LIMIT_MESSAGES = LIMIT_MESSAGES
    #: The parallel environment that gives a job several slots on one host (allocation_rule
    #: $pe_slots; the rig's `smp`). Sites name theirs differently: scheduler_options = -pe NAME N
    #: (with tasks and cpus_per_task left out) picks another.
    PARALLEL_ENVIRONMENT = "smp"

    def submit_argv(self, script: str, *, job_name: str, workdir: str,
                    stdout: str, stderr: str, request: Sequence[str] = ()) -> list[str]:
        for path in (stdout, stderr):
            if _BAD_OUTPUT_PATH.search(path):
                raise SchedulerError(f"Grid Engine would misread this output path (: , $ or newline): {path!r}",
                                     scheduler=self.name)
        return ["qsub", "-terse", *request, "-N", letter_first(job_name), "-wd", workdir,
                "-o", stdout, "-e", stderr, "-j", "n", "-S", "/bin/bash", script]

    def resource_options(self, resources: res.Resources) -> list[str]:
        r, argv, limits = resources, [], []
        if r.nodes and r.nodes > 1:
            raise RequestRefused([
                f"Grid Engine places slots, not nodes: nodes = {r.nodes} cannot be expressed "
                f"(its parallel environment {self.PARALLEL_ENVIRONMENT!r} keeps a job on one host); ask "
                "for tasks, or name a parallel environment that spreads slots over hosts in "
                "scheduler_options (-pe NAME N)"])
        if r.slots > 1:
            argv += ["-pe", self.PARALLEL_ENVIRONMENT, str(r.slots)]
        if r.time_limit:
            limits.append(f"h_rt={r.time_limit}")
        if r.memory_kib:
            # h_vmem is per slot: the node's memory shared among the job's slots (on one host);
            # sge_types(5) memory units: K M G (1024), no T
            limits.append(f"h_vmem={res.memory_text(res.ceil_div(r.memory_kib, r.slots), units='GMK')}")
        if limits:
            argv += ["-l", ",".join(limits)]
        if r.queue:
            argv += ["-q", r.queue]
        if r.array:
            argv += self._array_options(r.array)
        return argv

    @staticmethod
    def _array_options(spec: str) -> list[str]:
        # qsub(1): "-t n[-m[:s]]", one range of indices from 1; "-tc max_running_tasks"
        parts, cap = res.array_parts(spec)
        if len(parts) != 1 or parts[0][0] < 1:
            raise RequestRefused([f"Grid Engine takes one range of task indices from 1 (-t n-m:s): array = {spec} "
                                  "cannot be expressed; write it as one range"])
        first, last, step = parts[0]
        return ["-t", f"{first}-{last}:{step}", *(["-tc", str(cap)] if cap else [])]

    def parse_submit(self, out: CommandOutput) -> str:
        return single_job_id(out, _SUBMIT, "qsub -terse", self.name)

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        ids = ",".join(_ids(job_ids))
        # One command: the job table as XML (every user: ids are what we filter on); then, only
        # when some job is pending (q: qw hqw Eqw...), the "error reason" and "scheduling info"
        # lines of `qstat -j` for our ids; then, only when some job is in a h(old) state, the ids
        # under each blocking hold (qstat -s hu/ho/hs).
        script = (
            'out=$(qstat -xml -u "*") || { rc=$?; printf "%s\\n" "$out"; exit $rc; }\n'
            'printf "%s\\n" "$out"\n'
            'if printf "%s\\n" "$out" | grep -q "<state>[^<]*[Eq]"; then\n'
            f'  echo {_MARK}\n'
            '  qstat -j "$1" 2>&1 | awk \'/^(job_number|error reason)/ {print; s=0; next}\n'
            '    /^scheduling info:/ {print; s=1; next}  s && /^[ \\t]/ {print; next}  {s=0}\'\n'
            'fi\n'
            'if printf "%s\\n" "$out" | grep -q "<state>[^<]*h"; then\n'
            f'  for h in {" ".join(BLOCKING_HOLDS)}; do\n'
            f'    echo "{_HOLD_MARK} $h"\n'
            '    qstat -u "*" -s "$h" | awk \'$1 ~ /^[0-9]+$/ {print $1}\'\n'
            '  done\n'
            'fi\n'
            'exit 0')
        return ["sh", "-c", script, "sh", ids]

    def parse_status(self, out: CommandOutput, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        wanted = [str(i) for i in job_ids]
        asked = set(wanted)      # (a look at 10,000 jobs: a list would make this quadratic)
        if out.exit_code != 0:
            raise SchedulerError(f"qstat failed: {raw_output(out)}", scheduler=self.name, output=out,
                                 job_ids=wanted)
        xml_text, *sections = _SECTION.split(out.stdout)
        details, holds = "", {}
        for name, body in zip(sections[::2], sections[1::2]):
            if name == _MARK:
                details = body
            else:
                holds[name.split()[-1]] = set(body.split())
        try:
            root = ET.fromstring(xml_text.strip())
        except ET.ParseError as exc:
            raise SchedulerError(f"qstat -xml printed no valid XML ({exc}): {raw_output(out)}",
                                 scheduler=self.name, output=out, job_ids=wanted) from None
        if root.tag != "job_info":
            raise SchedulerError(f"unexpected qstat -xml document <{root.tag}>: {raw_output(out)}",
                                 scheduler=self.name, output=out, job_ids=wanted)
        errors, scheduling = _job_details(details)
        found: dict[str, JobStatus] = {}
        for job in root.iter("job_list"):
            job_id = (job.findtext("JB_job_number") or "").strip()
            state = job.findtext("state")
            if not job_id or state is None:
                raise SchedulerError(f"qstat -xml job entry without number or state: {raw_output(out)}",
                                     scheduler=self.name, output=out, job_ids=wanted)
            # array jobs list one entry per task group: the first one is kept
            if job_id in asked and job_id not in found:
                state = state.strip()
                category = self.categorize(state)
                reason = blocked = None
                if category == Category.FAILED:
                    reason = errors.get(job_id) or "job in error state (see qstat -j)"
                elif category == Category.QUEUED:
                    lines = scheduling.get(job_id, [])
                    reason = "; ".join(lines) or None
                    blocked = blocked_reason(job_id, state, lines, holds)
                elif state in ("t", "Rt"):
                    # sent to its host, never started there (its sge_execd is down): counts as
                    # blocked, so it fails after BlockedJobTimeoutSeconds instead of for ever
                    blocked = STUCK_TRANSFERRING
                found[job_id] = JobStatus(job_id, category, state, reason=reason, blocked=blocked)
        return {i: found.get(i) or JobStatus(i, Category.MISSING, "") for i in wanted}

    def accounting_argv(self, job_id: str) -> list[str] | None:
        return ["qacct", "-j", _ids([job_id])[0]]

    def parse_accounting(self, out: CommandOutput, job_id: str) -> JobStatus:
        if out.exit_code != 0 or not out.stdout.strip():
            if _QACCT_NOT_YET.search(out.stderr + out.stdout) or (out.exit_code == 0 and not out.stdout.strip()):
                return JobStatus(job_id, Category.MISSING, "")
            raise SchedulerError(f"qacct failed for job {job_id}: {raw_output(out)}",
                                 scheduler=self.name, output=out, job_ids=[job_id])
        records, current = [], None
        for line in out.stdout.splitlines():
            if line.startswith("=========="):
                current = {}
                records.append(current)
                continue
            m = _QACCT_LINE.fullmatch(line)
            if m and current is not None:
                current.setdefault(m.group("key"), m.group("value"))
        mine = [r for r in records if r.get("jobnumber") == job_id]
        if not mine:
            raise SchedulerError(f"qacct printed no record of job {job_id}: {raw_output(out)}",
                                 scheduler=self.name, output=out, job_ids=[job_id])
        record = mine[-1]   # several records: array tasks, or an id reused; the last is newest
        failed = _QACCT_FAILED.fullmatch(record.get("failed", ""))
        exit_status = _QACCT_EXIT.match(record.get("exit_status", ""))
        if not failed or not exit_status:
            raise SchedulerError(f"qacct record of job {job_id} lacks failed/exit_status: {raw_output(out)}",
                                 scheduler=self.name, output=out, job_ids=[job_id])
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
        return JobStatus(job_id, Category.FAILED, raw, exit_code=code, signal=signal, reason=reason,
                         limit=_limit_failure(failed_code, record))

    def recover_argv(self, job_name: str) -> list[str] | None:
        # every job qstat knows (JB_name), then the accounting file by name for ended ones
        # ("error: job name N not found", exit 1, when it has none)
        return ["sh", "-c",
                'out=$(qstat -xml -u "*") || { rc=$?; printf "%s\\n" "$out"; exit $rc; }\n'
                'printf "%s\\n" "$out"\n'
                f'echo {_RECOVER_MARK}\n'
                'qacct -j "$1" 2>&1\n'
                'exit 0', "sh", letter_first(job_name)]

    def parse_recover(self, out: CommandOutput, job_name: str) -> list[str]:
        name = letter_first(job_name)
        xml_text, mark, history = out.stdout.partition(_RECOVER_MARK)
        if out.exit_code != 0 or not mark:
            raise SchedulerError(f"qstat cannot say whether job {name!r} exists: {raw_output(out)}",
                                 scheduler=self.name, output=out)
        try:
            root = ET.fromstring(xml_text.strip())
        except ET.ParseError as exc:
            raise SchedulerError(f"qstat -xml printed no valid XML ({exc}): {raw_output(out)}",
                                 scheduler=self.name, output=out) from None
        ids = [(job.findtext("JB_job_number") or "").strip() for job in root.iter("job_list")
               if (job.findtext("JB_name") or "").strip() == name]
        records, current = [], {}
        for line in history.splitlines():
            if line.startswith("=========="):
                current = {}
                records.append(current)
                continue
            m = _QACCT_LINE.fullmatch(line)
            if m:
                current.setdefault(m.group("key"), m.group("value"))
        ids += [r.get("jobnumber", "") for r in records if r.get("jobname") == name]
        bad = [i for i in ids if not _JOB_ID.fullmatch(i)]
        if bad:
            raise SchedulerError(f"not Grid Engine job ids for job {name!r}: {bad!r}: {raw_output(out)}",
                                 scheduler=self.name, output=out, job_ids=bad)
        return sorted(set(ids), key=ids.index)

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        # qdel exits 1 when an id is already gone: that is not an error here, anything else is
        return qdel_argv(_ids(job_ids), _CANCEL_OK)


def blocked_reason(job_id: str, state: str, scheduling_info: list[str],
                   holds: dict[str, set[str]]) -> str | None:
    """Why a pending job cannot start by itself, in Grid Engine's words; None if it may start.

    `holds` maps "hu"/"ho"/"hs" to the ids `qstat -s` lists under that hold; `scheduling_info`
    are the job's "scheduling info" messages from `qstat -j`.
    """
    kinds = [kind for flag, kind in BLOCKING_HOLDS.items() if job_id in holds.get(flag, ())]
    if kinds and "h" in state:
        return f"{'/'.join(kinds)} hold ({state})"
    if scheduling_info and all(any(p.search(line) for p in _BLOCKED_INFO) for line in scheduling_info):
        return "; ".join(scheduling_info)
    return None


def _job_details(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """From `qstat -j` lines: job id -> first "error reason"; job id -> "scheduling info" messages."""
    errors: dict[str, str] = {}
    scheduling: dict[str, list[str]] = {}
    current, in_info = None, False
    for line in text.splitlines():
        m = _JOB_NUMBER.fullmatch(line)
        if m:
            current, in_info = m.group("id"), False
            continue
        m = _ERROR_REASON.fullmatch(line)
        if m:
            in_info = False
            if current and current not in errors:
                errors[current] = m.group("msg")
            continue
        m = _SCHED_INFO.fullmatch(line)
        if m or (in_info and line[:1] in (" ", "\t")):
            in_info = True
            message = m.group("msg") if m else line.strip()
            if current and message and not _NO_INFO.search(message):
                scheduling.setdefault(current, []).append(message)
            continue
        in_info = False
    return errors, scheduling
