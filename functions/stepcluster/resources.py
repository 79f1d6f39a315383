"""What a job asks of the cluster: nodes, tasks, CPUs, memory, time, queue, the rest as options.

The jobs config's optional resource keys (beyond the seed's grammar), in one portable form that
each scheduler adapter translates into its own submit options (`Scheduler.resource_argv`).
Parsing is pure and returns a message for a bad value, which the config reports with its
file:line like every other key:

    nodes = 2              integer >= 1
    tasks = 8              integer >= 1: tasks in all (MPI ranks)
    cpus_per_task = 4      integer >= 1
    memory = 4G            per node: an integer with unit K, M, G or T (powers of 1024)
    time_limit = 90        minutes; or HH:MM:SS; or D-HH:MM:SS
    queue = long           Slurm partition, Grid Engine queue, PBS queue
    array = 1-100%10       a job array: 1-100, 1-100:2, 1,3,7 (and ranges in a list); %N: at most
                           N tasks at once
    scheduler_options = --gres=gpu:1 --constraint="a100"   split as a shell would, never run by one
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, fields

#: Upper bounds: far above any cluster, low enough that a typo (an extra digit group) is caught.
MAX_COUNT = 1_000_000
MAX_MEMORY_KIB = 1024 ** 4            # 1 PiB per node
MAX_TIME_LIMIT = 366 * 24 * 3600      # a year: no run outlives Step Functions' own year
MAX_OPTIONS_CHARS = 4096
#: Tasks of one array: the payload holds counts, never per-task detail, so this bounds only what
#: a typo can ask for (Slurm's own MaxArraySize defaults to 1001, indices 0..1000).
MAX_ARRAY_TASKS = 100_000
MAX_ARRAY_INDEX = 10_000_000
UNITS_KIB = {"K": 1, "M": 1024, "G": 1024 ** 2, "T": 1024 ** 3}

_COUNT = re.compile(r"[0-9]{1,7}")
_ARRAY_PART = re.compile(r"(?P<a>[0-9]{1,8})(?:-(?P<b>[0-9]{1,8})(?::(?P<step>[0-9]{1,8}))?)?")
_MEMORY = re.compile(r"([0-9]{1,13})\s*([KMGTkmgt])(?:i?[Bb])?")
_MINUTES = re.compile(r"[0-9]{1,6}")
_HMS = re.compile(r"(?:(?P<d>[0-9]{1,3})-)?(?P<h>[0-9]{1,4}):(?P<m>[0-5][0-9]):(?P<s>[0-5][0-9])")
#: Slurm partitions, Grid Engine queues (also queue@host), PBS queues (also queue@server).
_QUEUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")


@dataclass(frozen=True)
class Resources:
    """A job's request; None (or no options) means the scheduler's default."""

    nodes: int | None = None
    tasks: int | None = None
    cpus_per_task: int | None = None
    memory_kib: int | None = None       # per node
    time_limit: int | None = None       # seconds
    queue: str | None = None
    scheduler_options: tuple[str, ...] = ()
    array: str | None = None            # the array's task indices, as parse_array wrote them

    @property
    def cores(self) -> int:
        """The cores the job asks for in all (tasks x cpus_per_task; 1 each by default)."""
        return (self.tasks or 1) * (self.cpus_per_task or 1)

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    @property
    def task_ids(self) -> list[int]:
        """The array's task indices ([] when the job is no array)."""
        return array_indices(self.array) if self.array else []

    @property
    def slots(self) -> int:
        """CPUs in all: tasks x cpus_per_task (1 each by default)."""
        return (self.tasks or 1) * (self.cpus_per_task or 1)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}
        if self.scheduler_options:
            out["scheduler_options"] = list(self.scheduler_options)
        return out

    @classmethod
    def from_dict(cls, data: dict | None) -> "Resources":
        data = dict(data or {})
        data["scheduler_options"] = tuple(data.get("scheduler_options") or ())
        return cls(**data)


# -- parsing the config's values: (value, None) or (None, what is wrong) -----------------------

def parse_count(text: str) -> tuple[int | None, str | None]:
    if _COUNT.fullmatch(text) and 1 <= int(text) <= MAX_COUNT:
        return int(text), None
    return None, f"must be a whole number from 1 to {MAX_COUNT:,}, got {text!r}"


def parse_memory(text: str) -> tuple[int | None, str | None]:
    m = _MEMORY.fullmatch(text)
    if m:
        kib = int(m.group(1)) * UNITS_KIB[m.group(2).upper()]
        if 1 <= kib <= MAX_MEMORY_KIB:
            return kib, None
        return None, f"must be between 1K and 1024T per node, got {text!r}"
    return None, (f"must be a whole number with a unit K, M, G or T (per node, powers of 1024), "
                  f"e.g. 4G or 512M, got {text!r}")


def parse_time_limit(text: str) -> tuple[int | None, str | None]:
    """`MM` (minutes), `HH:MM:SS` or `D-HH:MM:SS`."""
    seconds = None
    if _MINUTES.fullmatch(text):
        seconds = int(text) * 60
    elif m := _HMS.fullmatch(text):
        seconds = ((int(m.group("d") or 0) * 24 + int(m.group("h"))) * 60 + int(m.group("m"))) * 60 + int(m.group("s"))
    else:
        return None, f"must be minutes (90), HH:MM:SS (01:30:00) or D-HH:MM:SS (2-00:00:00), got {text!r}"
    if not 1 <= seconds <= MAX_TIME_LIMIT:
        return None, f"must be from 1 second to 366 days, got {text!r}"
    return seconds, None


def parse_queue(text: str) -> tuple[str | None, str | None]:
    if _QUEUE.fullmatch(text):
        return text, None
    return None, (f"must be a queue or partition name (letters, digits, _ . @ -, at most 128, "
                  f"starting with a letter or digit), got {text!r}")


def _ranges(spec: str) -> list[tuple[int, int, int]] | None:
    """(first, last, step) of each comma-separated part of `spec` (no %N); None if one is not
    `A`, `A-B` or `A-B:S`."""
    parts = []
    for m in map(_ARRAY_PART.fullmatch, spec.split(",")):
        if not m:
            return None
        parts.append((int(m["a"]), int(m["b"] if m["b"] is not None else m["a"]), int(m["step"] or 1)))
    return parts


def parse_array(text: str) -> tuple[str | None, str | None]:
    """`1-100`, `1-100:2`, `1,3,7`, `1-3,10`, each with an optional `%N` (tasks at once)."""
    spec, percent, cap = text.replace(" ", "").partition("%")
    parts = _ranges(spec) if spec else None
    if parts is None or (percent and not cap.isdigit()):
        return None, f"must be task indices like 1-100, 1-100:2 or 1,3,7, optionally %N (at most N at once), got {text!r}"
    for written, (a, b, step) in zip(spec.split(","), parts):
        if b < a or step < 1 or b > MAX_ARRAY_INDEX:
            return None, f"{written!r}: a range goes up (A-B with A <= B <= {MAX_ARRAY_INDEX:,}), by a step of 1 or more"
    count = sum((b - a) // step + 1 for a, b, step in parts)
    if count > MAX_ARRAY_TASKS:
        return None, f"asks for {count:,} tasks: at most {MAX_ARRAY_TASKS:,}"
    if cap and not 1 <= int(cap) <= MAX_ARRAY_TASKS:
        return None, f"%{cap}: at most 1 to {MAX_ARRAY_TASKS:,} tasks at once"
    return spec + (f"%{int(cap)}" if cap else ""), None


def array_indices(spec: str) -> list[int]:
    """The task indices of a spec parse_array accepted, sorted, each once."""
    parts, _ = array_parts(spec)
    return sorted({i for a, b, step in parts for i in range(a, b + 1, step)})


def array_parts(spec: str) -> tuple[list[tuple[int, int, int]], int | None]:
    """([(first, last, step)], tasks at once or None) of a spec parse_array accepted."""
    ranges, _, cap = spec.partition("%")
    return _ranges(ranges), int(cap) if cap else None


def parse_options(text: str) -> tuple[tuple[str, ...] | None, str | None]:
    """Split like a shell would (quotes, backslashes; no variables, globs or comments); the
    words are passed to the submit command as arguments, never through a shell."""
    if len(text) > MAX_OPTIONS_CHARS:
        return None, f"is longer than {MAX_OPTIONS_CHARS} characters"
    try:
        words = tuple(shlex.split(text, comments=False, posix=True))
    except ValueError as exc:   # "No closing quotation", "No escaped character"
        return None, f"cannot be split into options ({str(exc).lower()}): {text!r}"
    if not words:
        return None, "is empty: leave the key out"
    if not words[0].startswith("-"):
        return None, f"must start with an option (a word beginning with '-'), got {words[0]!r}"
    return words, None


# -- formatting, shared by the adapters ----------------------------------------------------------

def hms(seconds: int) -> str:
    """H:MM:SS with hours past 24 (Grid Engine h_rt, PBS walltime both read it)."""
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def memory_text(kib: int, units: str = "TGMK") -> str:
    """The largest of `units` that divides exactly: 4194304 KiB -> "4G"."""
    for unit in units.replace("K", ""):
        if kib % UNITS_KIB[unit] == 0:
            return f"{kib // UNITS_KIB[unit]}{unit}"
    return f"{kib}K"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
