"""The contract every scheduler adapter fulfils.

An adapter builds argument lists and parses what the scheduler printed. It performs no I/O:
the service runs the commands over SSH and hands the captured output back, so tests can feed
adapters recorded output. Each adapter declares its scheduler's states as one table (data, not
branches), mapping the scheduler's own word to a `Category`.

What counts as a job's final result is the exit-code file written by the job wrapper (see
`stepcluster.jobscript`); the scheduler's view matters while the job is queued or running and
when the job died without the wrapper recording anything (killed, node failure, cancelled).

A queued job can also be one that will never start by itself: held, asking for more than the
cluster's configuration allows, or depending on a job that failed. Schedulers leave such jobs
queued for ever, so `JobStatus.blocked` says so, in the scheduler's words; each adapter declares
the words that mean it as data next to its state table, with where they are documented. Only
conditions that need a person (the user, an operator, an administrator) to change something
count: a job waiting for resources, its turn, its start time or a running predecessor is not
blocked, since the service fails blocked jobs after a bounded time.
"""

from __future__ import annotations

import abc
import enum
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from stepcluster import directives
from stepcluster.directives import REFUSED, DirectiveSyntax, OptionRule
from stepcluster.errors import RequestRefused, SchedulerError
from stepcluster.resources import Resources


class Category(str, enum.Enum):
    """What a scheduler state means for the workflow."""

    QUEUED = "QUEUED"        # accepted, not started yet (may still start by itself)
    RUNNING = "RUNNING"      # started, not finished (includes completing/suspended phases)
    SUCCEEDED = "SUCCEEDED"  # finished, exit 0
    FAILED = "FAILED"        # finished unsuccessfully, or can never finish by itself
    CANCELLED = "CANCELLED"  # removed by a cancel (ours or someone else's)
    MISSING = "MISSING"      # the scheduler does not (or no longer) know(s) this id
    UNKNOWN = "UNKNOWN"      # a state word this adapter has never seen: reported, never success


ACTIVE = frozenset({Category.QUEUED, Category.RUNNING})
TERMINAL = frozenset({Category.SUCCEEDED, Category.FAILED, Category.CANCELLED})


@dataclass(frozen=True)
class JobStatus:
    """One job as the scheduler reports it."""

    job_id: str
    category: Category
    raw_state: str              # the scheduler's own word, e.g. "PENDING", "Eqw", "C"
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None   # scheduler's explanation, e.g. Slurm's Reason field
    #: set (only for QUEUED jobs) when the scheduler says the job cannot start by itself; the
    #: text says why in the scheduler's words: "PartitionConfig", "user hold (hqw)",
    #: "job_state H (Hold_Types u)". The category stays QUEUED: the job is still queued.
    blocked: str | None = None
    #: set (only for FAILED jobs) when the scheduler ended the job for passing a limit: which
    #: limit, its value and the scheduler's word, e.g. "time limit 00:01:00 (Slurm: TIMEOUT)"
    limit: str | None = None


@dataclass(frozen=True)
class CommandOutput:
    """What a command printed, as captured by the caller."""

    stdout: str
    stderr: str = ""
    exit_code: int = 0


class Scheduler(abc.ABC):
    """One scheduler's commands and output formats."""

    #: short name used in configs and template parameters ("slurm", "sge", "torque")
    name: str
    #: the scheduler's state words -> Category; unknown words map to Category.UNKNOWN
    STATES: Mapping[str, Category]

    @abc.abstractmethod
    def probe_argv(self) -> list[str]:
        """A cheap command that exits 0 only when the scheduler is installed and answering."""

    @abc.abstractmethod
    def submit_argv(self, script: str, *, job_name: str, workdir: str,
                    stdout: str, stderr: str, request: Sequence[str] = ()) -> list[str]:
        """Submit the batch script at path `script` (on the head node).

        The job runs in `workdir` with its stdout/stderr going to the given paths (absolute).
        `request` (from `request_argv`) comes before the options stepcluster tracks the job by,
        so that those win over it as they win over the script's directives.
        """

    #: What the scheduler's commands print when its controller does not answer (data, per
    #: adapter, from its own messages): such a failure is an outage, not a refusal.
    UNAVAILABLE: re.Pattern | None = None

    def unavailable(self, out: CommandOutput) -> bool:
        """True when a failed command says the scheduler itself could not be reached."""
        return out.exit_code != 0 and self.UNAVAILABLE is not None and bool(
            self.UNAVAILABLE.search(out.stderr) or self.UNAVAILABLE.search(out.stdout))

    @abc.abstractmethod
    def parse_submit(self, out: CommandOutput) -> str:
        """The job id from the submit command's output; SchedulerError if none."""

    @abc.abstractmethod
    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """One command that reports every job in `job_ids` (never one command per job).

        It may exit non-zero when some ids are unknown; `parse_status` copes.
        """

    @abc.abstractmethod
    def parse_status(self, out: CommandOutput, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """A status for every id in `job_ids`; ids the output does not mention are MISSING.

        Raises SchedulerError (with the raw text) when the output cannot be understood.
        """

    def accounting_argv(self, job_id: str) -> list[str] | None:
        """A command asking the scheduler's history about a job gone from the live queue.

        None when the scheduler keeps no history reachable from the head node.
        """
        return None

    def parse_accounting(self, out: CommandOutput, job_id: str) -> JobStatus:
        """Parse `accounting_argv`'s output; MISSING when the history does not know it (yet)."""
        return JobStatus(job_id, Category.MISSING, "")

    def recover_argv(self, job_name: str) -> list[str] | None:
        """A command listing the jobs the scheduler knows by the name `job_name` (as given to
        `submit_argv`): how a retried submit finds a job that an earlier attempt submitted but
        whose id it never recorded. None when this scheduler cannot be asked (then a retry
        refuses to guess: it never submits a second copy blindly)."""
        return None

    def parse_recover(self, out: CommandOutput, job_name: str) -> list[str]:
        """The ids of the jobs named `job_name` in `recover_argv`'s output; [] only when the
        scheduler answered and verifiably knows none. SchedulerError when it cannot tell."""
        raise SchedulerError(f"{self.name}: no way to find a job by its name",
                             scheduler=self.name, output=out)

    @abc.abstractmethod
    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        """One command cancelling all `job_ids`; cancelling a finished job is not an error."""

    def categorize(self, raw_state: str) -> Category:
        """Map a state word through the table; never guesses."""
        return self.STATES.get(raw_state, Category.UNKNOWN)

    # -- what a job asks for ------------------------------------------------------------------
    #: how the scheduler finds options in a script (see `stepcluster.directives`)
    DIRECTIVES: DirectiveSyntax
    #: options stepcluster overrides or refuses, wherever they are written
    OPTION_RULES: tuple[OptionRule, ...] = ()
    #: the submit options each resource key becomes: a key the config sets may not be set
    #: again in scheduler_options (which one would win is the scheduler's secret)
    RESOURCE_OPTIONS: Mapping[str, tuple[str, ...]] = {}

    @abc.abstractmethod
    def resource_options(self, resources: Resources) -> list[str]:
        """The submit options for the config's resource keys (not scheduler_options);
        RequestRefused when this scheduler cannot express one."""

    def request_problems(self, resources: Resources) -> list[str]:
        """Everything wrong with the config's request for this scheduler, one message each."""
        problems = []
        for option, rule in directives.find(resources.scheduler_options, self.DIRECTIVES, self.OPTION_RULES):
            problems.append(f"scheduler_options {option!r} is refused: {rule.why}"
                            if rule.effect == REFUSED else
                            f"scheduler_options {option!r} is refused: stepcluster sets that option itself: {rule.why}")
        for key, names in self.RESOURCE_OPTIONS.items():
            if getattr(resources, key):
                twice = OptionRule(names, REFUSED, "")
                for option, _ in directives.find(resources.scheduler_options, self.DIRECTIVES, [twice]):
                    problems.append(f"scheduler_options {option!r} is refused: the config's {key} "
                                    "already sets it; set it in one place")
        try:
            self.resource_options(resources)
        except RequestRefused as exc:
            problems.extend(exc.problems)
        return list(dict.fromkeys(problems))

    def request_argv(self, resources: Resources) -> list[str]:
        """The options that ask for `resources`; RequestRefused naming every problem."""
        problems = self.request_problems(resources)
        if problems:
            raise RequestRefused(problems)
        return [*self.resource_options(resources), *resources.scheduler_options]

    #: What the scheduler (or its job starter) writes into a job's stderr when it stops the job
    #: for passing a limit: (pattern, the limit in words from the match and the job's request).
    #: Data per adapter, from the scheduler's own messages; the first match counts.
    LIMIT_MESSAGES: tuple[tuple[re.Pattern, "Callable[[re.Match, Resources], str]"], ...] = ()

    def limit_in_stderr(self, stderr_tail: str, resources: Resources) -> str | None:
        """Which limit a failed job passed, its value and the scheduler's words, when its stderr
        says so ("memory limit 50M (Slurm: 'exceeded memory limit (325697536 > 52428800)')")."""
        for pattern, describe in self.LIMIT_MESSAGES:
            m = pattern.search(stderr_tail or "")
            if m:
                return describe(m, resources)
        return None

    def review_directives(self, found: Sequence[directives.Directive]) -> list[directives.Finding]:
        """What the rules say about the options of a handler's directive lines."""
        return [directives.Finding(option, rule, d.line, d.text) for d in found
                for option, rule in directives.find(d.options, self.DIRECTIVES, self.OPTION_RULES)]


# -- helpers the adapters share ---------------------------------------------------------------

def check_job_ids(job_ids: Sequence[str], pattern: re.Pattern, scheduler: str, label: str) -> list[str]:
    """The ids as strings; SchedulerError for none, or for one that is not wholly an id.

    `scheduler` is the adapter's short name ("slurm"), `label` how messages name it ("Slurm").
    """
    ids = [str(i) for i in job_ids]
    if not ids:
        raise SchedulerError(f"no {label} job ids given", scheduler=scheduler)
    bad = [i for i in ids if not pattern.fullmatch(i)]
    if bad:
        raise SchedulerError(f"not {label} job ids: {bad!r}", scheduler=scheduler, job_ids=bad)
    return ids


#: Which task of an array speaks for it: one still running, else one queued (the array goes on),
#: else one that failed, else one cancelled, else (every task succeeded) any.
_ARRAY_PRECEDENCE = (Category.RUNNING, Category.QUEUED, Category.UNKNOWN, Category.FAILED,
                     Category.CANCELLED, Category.SUCCEEDED, Category.MISSING)


def array_status(tasks: Sequence[JobStatus]) -> JobStatus:
    """One status for an array job from its tasks' (all with the array's id)."""
    return min(tasks, key=lambda t: _ARRAY_PRECEDENCE.index(t.category))


def raw_output(out: CommandOutput) -> str:
    """A command's output as it goes into an error message: exit code, stdout, stderr."""
    return f"(exit {out.exit_code})\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"


def single_job_id(out: CommandOutput, pattern: re.Pattern, command: str, scheduler: str) -> str:
    """The one job id a submit command printed (named group "id"); SchedulerError otherwise."""
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    matches = [m for m in map(pattern.fullmatch, lines) if m]
    if out.exit_code != 0 or len(matches) != 1:
        raise SchedulerError(f"{command} did not print one job id: {raw_output(out)}",
                             scheduler=scheduler, output=out)
    return matches[0].group("id")


def letter_first(name: str) -> str:
    """A job name for schedulers that want "the first character alphabetic" (SGE, Torque)."""
    return name if name[:1].isalpha() else "j" + name


def qdel_argv(job_ids: Sequence[str], already_gone: str) -> list[str]:
    """qdel all ids; exit 0 when its only complaints match `already_gone` (a regex).

    qdel exits 1 for an id already finished or gone: not an error when cancelling leftovers,
    but anything else (qmaster/server down) still is.
    """
    script = ('out=$(qdel "$@" 2>&1); rc=$?; [ -n "$out" ] && printf "%s\\n" "$out"\n'
              f'[ $rc -eq 0 ] || ! printf "%s\\n" "$out" | grep -Evq "{already_gone}" || exit $rc\n'
              'exit 0')
    return ["sh", "-c", script, "sh", *job_ids]
