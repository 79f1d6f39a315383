"""Slurm: sbatch, squeue, scontrol (sacct when the cluster keeps accounting), scancel.

Observed on Slurm 22.05 (the local rig) and recorded in tests/fixtures/schedulers/slurm/:

- `squeue -j A,B,...` with several ids reports the ones slurmctld still knows and exits 0, even
  when none of them is known (empty output). With ONE id that slurmctld does not know it exits
  1 with "slurm_load_jobs error: Invalid job id specified" on stderr. Both mean MISSING. Any
  other failure (e.g. "Unable to contact slurm controller") is a SchedulerError, never MISSING.
- Finished jobs stay visible to `squeue -t all` and `scontrol show job` for MinJobAge seconds
  (default 300), then only `sacct` (slurmdbd) knows them.
- `scancel` exits 0 for finished and unknown ids.
- Impossible requests (rig: one node, 32 CPUs, RealMemory=32000, EnforcePartLimits=NO, the
  default): sbatch REFUSES at submit `--mem` above RealMemory and `--tmp` above TmpDisk
  ("Memory specification can not be satisfied" / "Requested node configuration is not
  available", exit 1), an unknown partition, feature (-C) or gres; it ACCEPTS `-c 64` (pending,
  Reason=PartitionConfig) and `-N 2` (PartitionNodeLimit): with EnforcePartLimits=ALL|ANY those
  would be refused at submit too. Held jobs (`--hold`) pend with JobHeldUser, a job
  `--dependency=afterok:` on a failed job with DependencyNeverSatisfied (for ever: unless
  SchedulerParameters=kill_invalid_depend, which cancels it). `scontrol requeuehold` leaves a
  PENDING job whose Reason is the free text "job requeued in held state" (squeue; scontrol:
  "job_requeued_in_held_state"): held jobs are recognised by their priority 0, not by the text.
"""

from __future__ import annotations

import re
from typing import Sequence

from stepcluster import resources as res
from stepcluster.directives import OVERRIDDEN, REFUSED, DirectiveSyntax, OptionRule, value_lacks
from stepcluster.errors import SchedulerError
from stepcluster.schedulers.base import (
    Category, CommandOutput, JobStatus, Scheduler, array_status, check_job_ids, single_job_id, raw_output,
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

# -- jobs that cannot start by themselves ---------------------------------------------------------
# Reason codes (squeue %r, scontrol Reason=) of PENDING jobs that only a person can unblock: the
# request does not fit the configuration, a per-job limit, a hold, a dependency that can never be
# satisfied. From "Job Reason Codes" https://slurm.schedmd.com/job_reason_codes.html (doc/html/
# job_reason_codes.shtml) and squeue(1) JOB REASON CODES (22.05.8 on the rig); the code -> text
# mapping is job_state_reason_string() in the Slurm source.
_PER_ASSOC = "AssocMax* per-job/per-node limit: 'A portion of the job request exceeds a maximum limit (e.g., PerJob, PerNode) for the requested association'"
_PER_QOS = "QOSMax* per-job/per-node limit: 'A portion of the job request exceeds a maximum limit (e.g., PerJob, PerNode) for the requested QOS'"
_QOS_MIN = "QOSMin*: the request 'does not meet the minimum each job is allowed to use for the requested QOS'"
BLOCKED_REASONS: dict[str, str] = {
    # the request does not fit the partition (sbatch accepts it while EnforcePartLimits=NO)
    "PartitionConfig": "'Fallback reason when the job violates some limit on the partition' (rig: sbatch -c 64, 32-CPU node)",
    "PartitionNodeLimit": "'number of nodes required by this job is outside of its partition's current limits' (rig: sbatch -N 2, 1-node partition)",
    "PartitionTimeLimit": "'The job's time limit exceeds its partition's current time limit'",
    "BadConstraints": "'The job's requirements cannot be satisfied. Used in cases when the job is never expected to be runnable'",
    "MaxMemPerLimit": "'The job violates the limit on the maximum amount of Memory per-CPU or per-Node'",
    "InvalidAccount": "'The job's account is invalid'",
    "InvalidQOS": "'The job's QOS is invalid'",
    "AccountNotAllowed": "'Job is in an account not allowed in a partition'",
    "QOSNotAllowed": "'The job requests a QOS is not allowed by the requested association or partition'",
    "ReservationDeleted": "'The job requested a reservation that is no longer on the system'",
    # holds: priority 0 until `scontrol release`
    "JobHeldUser": "'The job is held by the user or an account coordinator' (rig: sbatch --hold)",
    "JobHeldAdmin": "'The job is held by a privileged user'",
    "JobHoldMaxRequeue": "'Job has been requeued enough times to reach the MAX_BATCH_REQUEUE limit' (held)",
    "DependencyNeverSatisfied": "'dependency on another job that will never be satisfied' (rig: afterok on a failed job)",
    # the nodes it needs are down: in the cloud a lost or never-launched instance, which bills
    # until someone acts; a run that waits for them is bounded by BlockedJobTimeoutSeconds
    "NodeDown": "'A node required by the job is down'",
    **{code: _PER_ASSOC for code in (
        "AssocMaxBBMinutesPerJob", "AssocMaxBBPerJob", "AssocMaxBBPerNode", "AssocMaxBillingMinutesPerJob",
        "AssocMaxBillingPerJob", "AssocMaxBillingPerNode", "AssocMaxCpuMinutesPerJobLimit",
        "AssocMaxCpuPerJobLimit", "AssocMaxCpuPerNode", "AssocMaxEnergyMinutesPerJob", "AssocMaxEnergyPerJob",
        "AssocMaxEnergyPerNode", "AssocMaxGRESMinutesPerJob", "AssocMaxGRESPerJob", "AssocMaxGRESPerNode",
        "AssocMaxLicenseMinutesPerJob", "AssocMaxLicensePerJob", "AssocMaxMemMinutesPerJob", "AssocMaxMemPerJob",
        "AssocMaxMemPerNode", "AssocMaxNodeMinutesPerJob", "AssocMaxNodePerJobLimit",
        "AssocMaxUnknownMinutesPerJob", "AssocMaxUnknownPerJob", "AssocMaxUnknownPerNode",
        "AssocMaxWallDurationPerJobLimit")},
    **{code: _PER_QOS for code in (
        "QOSMaxBBMinutesPerJob", "QOSMaxBBPerJob", "QOSMaxBBPerNode", "QOSMaxBillingMinutesPerJob",
        "QOSMaxBillingPerJob", "QOSMaxBillingPerNode", "QOSMaxCpuMinutesPerJobLimit", "QOSMaxCpuPerJobLimit",
        "QOSMaxCpuPerNode", "QOSMaxEnergyMinutesPerJob", "QOSMaxEnergyPerJob", "QOSMaxEnergyPerNode",
        "QOSMaxGRESMinutesPerJob", "QOSMaxGRESPerJob", "QOSMaxGRESPerNode", "QOSMaxLicenseMinutesPerJob",
        "QOSMaxLicensePerJob", "QOSMaxMemoryMinutesPerJob", "QOSMaxMemoryPerJob", "QOSMaxMemoryPerNode",
        "QOSMaxNodeMinutesPerJob", "QOSMaxNodePerJobLimit", "QOSMaxUnknownMinutesPerJob",
        "QOSMaxUnknownPerJob", "QOSMaxUnknownPerNode", "QOSMaxWallDurationPerJobLimit")},
    **{code: _QOS_MIN for code in (
        "QOSMinBB", "QOSMinBilling", "QOSMinCpuNotSatisfied", "QOSMinEnergy", "QOSMinGRES", "QOSMinLicense",
        "QOSMinMemory", "QOSMinNode", "QOSMinUnknown")},
}
# Reasons that look alarming but are NOT blocked (the judgement, for readers and tests): each
# changes without anyone acting on this job, or after a routine action on the cluster.
WAITING_REASONS: dict[str, str] = {
    "None": "not considered yet in the current scheduling cycle",
    "WaitingForScheduling": "no reason set yet",
    "Priority": "higher-priority jobs first",
    "Resources": "resources in use by other jobs",
    "BeginTime": "--begin not reached",
    "Dependency": "predecessor still running",
    "Licenses": "waiting for a license",
    "Reservation": "waiting for its reservation to start",
    "Prolog": "PrologSlurmctld running",
    "Cleaning": "being requeued",
    "Constraints": "'cannot be satisfied at this time'",
    "SchedDefer": "immediate allocation deferred",
    "FedJobLock": "federation sync",
    "JobArrayTaskLimit": "array throttle (%N)",
    "BurstBufferResources": "burst buffer pool full",
    "BurstBufferStageIn": "staging in",
    "PowerNotAvail": "power capping",
    "PowerReserved": "power capping",
    "AccountingPolicy": "fallback for limits reached",
    # partitions down or drained: maintenance ends, nodes come back; an administrator
    # acts for the whole cluster, not for this job. ReqNodeNotAvail "may currently be in use,
    # reserved for another job" too. The service's bound on queued time covers long outages.
    "ReqNodeNotAvail": "nodes in use, reserved, down or drained (maintenance)",
    "PartitionDown": "partition DOWN (maintenance)",
    "PartitionInactive": "partition INACTIVE (maintenance)",
    "FrontEndDown": "no front end node available",
    # aggregate and per-user/per-account limits: other jobs ending frees them. (A job that alone
    # exceeds such a limit shows the same code and then waits for ever: Slurm cannot tell.)
    "AssocMaxJobsLimit": "per-user running-jobs limit of the association: met until other jobs end",
    "AssocMaxSubmitJobLimit": "running+pending jobs limit",
    "AssociationJobLimit": "association's job count",
    "AssociationResourceLimit": "association's resource limit",
    "AssociationTimeLimit": "association's time limit",
    "AssocGrpCpuLimit": "AssocGrp*: aggregate limit reached",
    "AssocGrpJobsLimit": "AssocGrp*: aggregate limit reached",
    "AssocGrpCPUMinutesLimit": "AssocGrp*Minutes: usage budget; decays / reset by the site's policy",
    "QOSGrpNodeLimit": "QOSGrp*: aggregate limit reached",
    "QOSGrpCPURunMinutesLimit": "QOSGrp*RunMinutes: running jobs' minutes",
    "QOSJobLimit": "QOS job count",
    "QOSResourceLimit": "QOS resource limit",
    "QOSTimeLimit": "QOS time limit",
    "QOSUsageThreshold": "QOS usage threshold",
    "QOSMaxJobsPerUserLimit": "per-user running jobs",
    "QOSMaxSubmitJobPerUserLimit": "per-user running+pending jobs",
    "QOSMaxCpuPerUserLimit": "per-user CPUs in use",
    "QOSMaxNodePerUserLimit": "per-user nodes in use",
    "QOSMaxMemoryPerUser": "per-user memory in use",
    "QOSMaxGRESPerUser": "per-user GRES in use",
    "MaxJobsPerAccount": "per-account running jobs of the QOS",
    "MaxCpuPerAccount": "per-account CPUs in use",
}
# Job states that are holds whatever the reason (job_state_codes.html): the category stays QUEUED.
#: Free-text reasons (squeue's %r is then a sentence, not a code) that mean the same, by prefix.
BLOCKED_REASON_TEXTS: dict[str, str] = {
    "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions":
        "the job's nodes are down or drained (rig: slurmd stopped, node 'down* Not responding' "
        "after SlurmdTimeout; a running job is requeued PENDING with this reason)",
}
BLOCKED_STATES: dict[str, str] = {
    "REQUEUE_HOLD": "'Held job is being requeued' (released only by scontrol release)",
    "RESV_DEL_HOLD": "'Job is being held after requested reservation was deleted'",
}
# priority 0 is "reserved for held jobs" (priority plugins raise any computed priority to 1);
# it catches holds whose Reason is free text: "job requeued in held state", "launch failed
# requeued held".
_HELD_PRIORITY = 0
_REASON_CODE = re.compile(r"^[A-Za-z_]+")

_SUBMIT = re.compile(r"^(?P<id>\d+)(?:;(?P<cluster>\S+))?$")
_JOB_ID = re.compile(r"^\d+(?:_\d+)?$")
# id | state | priority | time limit | memory asked for | reason (last: it may be free text)
_STATUS_FORMAT = "%i|%T|%Q|%l|%m|%r"
_ROW = re.compile(r"^(?P<id>[0-9_\[\]\-,%]+)\|(?P<state>[^|]*)\|(?P<priority>\d*)\|(?P<time>[^|]*)\|(?P<mem>[^|]*)"
                  r"\|(?P<reason>.*)$")
_UNKNOWN_ID = re.compile(r"Invalid job id specified")
# stderr lines of `scontrol show job` / `sacct` that only mean "I do not know this job"; any
# other complaint (controller or database unreachable...) is an error, not a missing job
_ACCOUNTING_NOT_KNOWN = re.compile(r"Invalid job id specified|accounting storage is disabled", re.IGNORECASE)
# one `scontrol -o show job` record (one line); values are single tokens for these keys
_SC_ID = re.compile(r"(?:^|\s)JobId=(?P<id>\S+)")
_SC_STATE = re.compile(r"\sJobState=(?P<state>\S+)")
_SC_REASON = re.compile(r"\sReason=(?P<reason>\S+)")
_SC_PRIORITY = re.compile(r"\sPriority=(?P<priority>\d+)")
_SC_EXIT = re.compile(r"\sExitCode=(?P<code>\d+):(?P<signal>\d+)")
_SC_TIME = re.compile(r"\sTimeLimit=(?P<time>\S+)")
_SC_MEM = re.compile(r"\sMinMemory(?:Node|CPU)=(?P<mem>\S+)")
_SACCT_ROW = re.compile(r"^(?P<id>[^|]+)\|(?P<state>[^|]+)\|(?P<code>\d+):(?P<signal>\d+)$")
_BAD_PATH = re.compile(r"[%\\\n]")
_RECOVER_MARK = "@@stepcluster-sacct"   # sbatch expands %j, %x... in -o/-e; "\" turns that off




# -- options in scripts and in scheduler_options ---------------------------------------------------
# sbatch(1) DESCRIPTION: options "preceded with "#SBATCH" before any executable commands in the
# script. sbatch will stop processing further #SBATCH directives once the first non-comment
# non-whitespace line has been reached"; options on the command line override them. Seen on the
# rig (22.05): "#SBATCH --ntasks=2   # two tasks" is read as --ntasks=2.
DIRECTIVES = DirectiveSyntax("#SBATCH", whole_file=False, getopt=True, short_flags="HOQsvWhVk",
                             documented="sbatch(1) DESCRIPTION")
OPTION_RULES = (
    OptionRule(("-o", "--output"), OVERRIDDEN, "stdout goes to the job's folder, where stepcluster keeps it"),
    OptionRule(("-e", "--error"), OVERRIDDEN, "stderr goes to the job's folder, where stepcluster keeps it"),
    OptionRule(("-D", "--chdir"), OVERRIDDEN, "the job starts in its staged files' folder ($STEPCLUSTER_SOURCE)"),
    OptionRule(("-J", "--job-name"), OVERRIDDEN, "the job's name on the scheduler is how stepcluster finds it again"),
    OptionRule(("-W", "--wait"), REFUSED, "sbatch would not return until the job ends: the run needs the job id at once",
               takes_value=False),
    OptionRule(("-d", "--dependency"), REFUSED, "the run's [order] decides when a job starts"),
    OptionRule(("-a", "--array"), REFUSED, "an array is the config's `array` key (stepcluster keeps each task's record)"),
    OptionRule(("-H", "--hold"), REFUSED, "a held job never starts by itself", takes_value=False),
    OptionRule(("--test-only",), REFUSED, "sbatch would submit nothing", takes_value=False),
    OptionRule(("--wrap",), REFUSED, "the handler is the job's script"),
    OptionRule(("-M", "--clusters"), REFUSED, "the job must run on the cluster the run created or was given"),
    OptionRule(("--export",), REFUSED, "without ALL the job loses the submission environment (PATH) the "
               "wrapper runs with; --export=ALL,NAME=VALUE works", when=value_lacks("ALL")),
)
#: slurmstepd's words in the job's stderr (22.05, rig): a step killed by OverMemoryKill is
#: "StepId=28.batch exceeded memory limit (325697536 > 52428800), being killed" and the job ends
#: FAILED (Reason JobLaunchFailure), not OUT_OF_MEMORY; a time limit "*** JOB 27 ON localhost
#: CANCELLED AT ... DUE TO TIME LIMIT ***" (then TIMEOUT, which the status says as well).
LIMIT_MESSAGES = (
    (re.compile(r"exceeded memory limit \((?P<used>\d+) > (?P<limit>\d+)\)"),
     lambda m, r: f"memory limit {res.memory_text(int(m.group('limit')) // 1024)} "
                  f"(Slurm: {m.group(0)!r})"),
    (re.compile(r"CANCELLED AT \S+ DUE TO TIME LIMIT"),
     lambda m, r: f"time limit{' ' + res.hms(r.time_limit) if r.time_limit else ''} (Slurm: {m.group(0)!r})"),
)
RESOURCE_OPTIONS = {
    "nodes": ("-N", "--nodes"), "tasks": ("-n", "--ntasks"), "cpus_per_task": ("-c", "--cpus-per-task"),
    "memory_kib": ("--mem", "--mem-per-cpu", "--mem-per-gpu"), "time_limit": ("-t", "--time"),
    "queue": ("-p", "--partition"), "array": ("-a", "--array"),
}


#: The states in which Slurm ended a job for passing one of its limits: which limit, and where
#: its value is (job_state_codes.html: TIMEOUT "terminated upon reaching its time limit",
#: OUT_OF_MEMORY "experienced out of memory error").
LIMIT_STATES: dict[str, str] = {"TIMEOUT": "time limit", "OUT_OF_MEMORY": "memory limit"}


def limit_passed(raw_state: str, time_limit: str | None, memory: str | None) -> str | None:
    """"time limit 00:01:00 (Slurm: TIMEOUT)" for a job Slurm ended for a limit; else None."""
    state = raw_state.split(" ")[0]
    which = LIMIT_STATES.get(state)
    if not which:
        return None
    value = _duration(time_limit) if state == "TIMEOUT" else memory
    value = f" {value}" if value and value not in ("0", "UNLIMITED", "(null)") else ""
    return f"{which}{value} (Slurm: {state})"


_DURATION = re.compile(r"(?:(?P<d>\d+)-)?(?:(?:(?P<h>\d+):)?(?P<m>\d+):)?(?P<s>\d+)")


def _duration(text: str | None) -> str | None:
    """Slurm's time forms (squeue "1:00" = M:SS, scontrol "00:01:00", "2-00:00:00") as H:MM:SS."""
    m = _DURATION.fullmatch(text or "")
    if not m:
        return text
    days, hours, minutes, seconds = (int(m.group(k) or 0) for k in "dhms")
    return res.hms(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def _reason(text: str | None) -> str | None:
    return None if text in (None, "", "None", "(null)") else text


def blocked_reason(raw_state: str, reason: str | None, priority: int | None) -> str | None:
    """Why a queued job cannot start by itself, in Slurm's words; None when it may still start.

    `reason` is squeue's %r (a code, "ReqNodeNotAvail, UnavailableNodes:n1", or free text) or
    scontrol's Reason=; `priority` squeue's %Q / scontrol's Priority= (None: unknown).
    """
    state = raw_state.split(" ")[0]
    if state in BLOCKED_STATES:
        return f"{state} ({reason})" if reason else state
    code = _REASON_CODE.match(reason or "")
    if code and code.group(0) in BLOCKED_REASONS:
        return reason
    if reason and any(reason.startswith(text) for text in BLOCKED_REASON_TEXTS):
        return reason
    if priority == _HELD_PRIORITY and state == "PENDING":
        return reason.replace("_", " ") if reason else "held (priority 0)"
    return None


def _ids(job_ids: Sequence[str]) -> list[str]:
    return check_job_ids(job_ids, _JOB_ID, "slurm", "Slurm")


class Slurm(Scheduler):
    name = "slurm"
    STATES = STATES
    # rig, slurmctld stopped: "sbatch: error: Batch job submission failed: Unable to contact slurm
    # controller (connect failure)"; squeue: "slurm_load_jobs error: Unable to contact slurm
    # controller"; the others are slurm_strerror()'s words for a controller that does not answer
    UNAVAILABLE = re.compile(r"Unable to contact slurm controller|Socket timed out on send/recv operation"
                             r"|Slurm temporarily unable to accept job")

    def probe_argv(self) -> list[str]:
        # sinfo asks slurmctld: exits 1 when it cannot be reached
        return ["sinfo", "--noheader", "--summarize"]

    DIRECTIVES = DIRECTIVES
    OPTION_RULES = OPTION_RULES
    RESOURCE_OPTIONS = RESOURCE_OPTIONS
    LIMIT_MESSAGES = LIMIT_MESSAGES

    def submit_argv(self, script: str, *, job_name: str, workdir: str,
                    stdout: str, stderr: str, request: Sequence[str] = ()) -> list[str]:
        for path in (stdout, stderr):
            if _BAD_PATH.search(path):
                raise SchedulerError(f"Slurm would rewrite this output path (%, \\ or newline): {path!r}",
                                     scheduler=self.name)
        return ["sbatch", "--parsable", *request, "-J", job_name, "-D", workdir,
                "-o", stdout, "-e", stderr, script]

    def resource_options(self, resources: res.Resources) -> list[str]:
        r, argv = resources, []
        if r.nodes:
            argv.append(f"--nodes={r.nodes}")
        if r.tasks:
            argv.append(f"--ntasks={r.tasks}")
        if r.cpus_per_task:
            argv.append(f"--cpus-per-task={r.cpus_per_task}")
        if r.memory_kib:
            argv.append(f"--mem={res.memory_text(r.memory_kib)}")   # per node, K/M/G/T as Slurm reads them
        if r.time_limit:
            # days-hours:minutes:seconds; Slurm counts whole minutes, rounding a part minute up
            days, rest = divmod(r.time_limit, 86400)
            argv.append(f"--time={days}-{res.hms(rest)}" if days else f"--time={res.hms(rest)}")
        if r.queue:
            argv.append(f"--partition={r.queue}")
        if r.array:
            argv.append(f"--array={r.array}")   # sbatch(1) reads the same syntax: 1-8:2, 1,3,7, %N
        return argv

    def parse_submit(self, out: CommandOutput) -> str:
        return single_job_id(out, _SUBMIT, "sbatch", self.name)

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["squeue", "--noheader", "--states=all", "--jobs=" + ",".join(_ids(job_ids)),
                "--format=" + _STATUS_FORMAT]

    def parse_status(self, out: CommandOutput, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        wanted = [str(i) for i in job_ids]
        asked = set(wanted)      # (a look at 10,000 jobs: a list would make this quadratic)
        found: dict[str, JobStatus] = {}
        tasks: dict[str, list[JobStatus]] = {}
        if out.exit_code != 0 and not (_UNKNOWN_ID.search(out.stderr) and not out.stdout.strip()):
            raise SchedulerError(f"squeue failed: {raw_output(out)}", scheduler=self.name, output=out,
                                 job_ids=wanted)
        for line in out.stdout.splitlines():
            if not line.strip():
                continue
            m = _ROW.fullmatch(line.strip())
            if not m:
                raise SchedulerError(f"unexpected squeue line {line!r}: {raw_output(out)}",
                                     scheduler=self.name, output=out, job_ids=wanted)
            job_id = m.group("id")
            # an array's tasks are rows "ID_TASK" (or "ID_[2-8%2]" while pending): they stand
            # for the array ID, which has no row of its own
            array_id = job_id.split("_", 1)[0] if "_" in job_id else None
            if (job_id in asked and job_id not in found) or array_id in asked:
                priority = m.group("priority")
                status = self._status(array_id or job_id, m.group("state").strip(),
                                      _reason(m.group("reason").strip()),
                                      priority=int(priority) if priority else None,
                                      limits=(m.group("time"), m.group("mem")))
                if array_id:
                    tasks.setdefault(array_id, []).append(status)
                else:
                    found[job_id] = status
        for array_id, rows in tasks.items():
            found.setdefault(array_id, array_status(rows))
        return {i: found.get(i) or JobStatus(i, Category.MISSING, "") for i in wanted}

    def _status(self, job_id: str, raw_state: str, reason: str | None,
                code: int | None = None, signal: int | None = None,
                priority: int | None = None, limits: tuple[str | None, str | None] = (None, None)) -> JobStatus:
        # "CANCELLED by 1001" (sacct) -> CANCELLED; the raw text is kept
        category = self.categorize(raw_state.split(" ")[0]) if raw_state else Category.UNKNOWN
        if category not in (Category.SUCCEEDED, Category.FAILED, Category.CANCELLED):
            code = signal = None
        elif category == Category.SUCCEEDED and (code or signal):
            category = Category.FAILED   # never call a non-zero exit a success
        blocked = blocked_reason(raw_state, reason, priority) if category == Category.QUEUED else None
        limit = limit_passed(raw_state, *limits) if category == Category.FAILED else None
        return JobStatus(job_id, category, raw_state, exit_code=code,
                         signal=signal or None, reason=reason, blocked=blocked, limit=limit)

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
                    raise SchedulerError(f"scontrol record without JobState/ExitCode: {raw_output(out)}",
                                         scheduler=self.name, output=out, job_ids=[job_id])
                priority = _SC_PRIORITY.search(line)
                time_limit, memory = _SC_TIME.search(line), _SC_MEM.search(line)
                return self._status(job_id, state.group("state"), _reason(reason and reason.group("reason")),
                                    int(code.group("code")), int(code.group("signal")),
                                    priority=int(priority.group("priority")) if priority else None,
                                    limits=(time_limit and time_limit.group("time"), memory and memory.group("mem")))
        rows = [m for m in map(_SACCT_ROW.fullmatch, (r.strip() for r in records)) if m and m.group("id") == job_id]
        if rows:   # a reused id (state wiped) gives several rows: the last is the newest
            row = rows[-1]
            return self._status(job_id, row.group("state"), None,
                                int(row.group("code")), int(row.group("signal")))
        if records and not any(_SC_ID.search(r) or "|" in r for r in records):
            raise SchedulerError(f"unexpected accounting output for job {job_id}: {raw_output(out)}",
                                 scheduler=self.name, output=out, job_ids=[job_id])
        unexplained = [line for line in out.stderr.splitlines()
                       if line.strip() and not _ACCOUNTING_NOT_KNOWN.search(line)]
        if out.exit_code != 0 and unexplained:
            raise SchedulerError(f"cannot read Slurm's history of job {job_id}: {raw_output(out)}",
                                 scheduler=self.name, output=out, job_ids=[job_id])
        return JobStatus(job_id, Category.MISSING, "")

    def recover_argv(self, job_name: str) -> list[str] | None:
        # slurmctld's memory (every state, for MinJobAge after the end), then slurmdbd's when
        # the cluster keeps accounting; sacct's complaints ("accounting storage is disabled")
        # go to stdout after the mark and do not make the answer unsure: squeue's does.
        return ["sh", "-c",
                'squeue --noheader --states=all --name="$1" --format=%i || exit $?\n'
                f'echo {_RECOVER_MARK}\n'
                'sacct --noheader --allocations --parsable2 --format=JobIDRaw,JobName '
                '--starttime=now-7days --name="$1" 2>&1\n'
                'exit 0', "sh", job_name]

    def parse_recover(self, out: CommandOutput, job_name: str) -> list[str]:
        live, mark, history = out.stdout.partition(_RECOVER_MARK)
        if out.exit_code != 0 or not mark:
            raise SchedulerError(f"squeue cannot say whether job {job_name!r} exists: {raw_output(out)}",
                                 scheduler=self.name, output=out)
        ids = []
        for line in (line.strip() for line in live.splitlines()):
            if not line:
                continue
            if not _JOB_ID.fullmatch(line):
                raise SchedulerError(f"unexpected squeue line {line!r}: {raw_output(out)}",
                                     scheduler=self.name, output=out)
            ids.append(line)
        for line in history.splitlines():
            row = line.strip().split("|")
            if len(row) == 2 and row[1] == job_name and _JOB_ID.fullmatch(row[0]):
                ids.append(row[0])
        return sorted(set(ids), key=ids.index)

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        # scancel exits 0 for finished and unknown ids (observed on 22.05)
        return ["scancel", *_ids(job_ids)]
