"""The jobs config: which jobs to run, in which order, and where their files come from.

Grammar (the contract is the user's docs, docs "Jobs Config")::

    [order]
    sequential = prepare, simulate, report      # exactly one of sequential / parallel

    [job prepare]
    handler = src/prepare.sh                    # relative path inside the job's files
    s3_uri = s3://my-bucket/projects/prepare/   # exactly one of s3_uri / local_path
    wait_time = 30                              # optional, integer seconds 1..240, default 10

The file is read by a small INI reader of our own (`stepcluster.inifile`, not configparser) so
that every problem can be reported with its line, and so that nothing the user writes can end in
a traceback; this module reads its sections as the grammar, one validator per key (the table at
the bottom). Every problem found in one pass is reported at once, as a `ConfigError` holding
`Problem`s.

Decisions (documented here because they are part of the contract):

* Encoding: UTF-8 (a leading BOM is accepted). Other bytes, NUL bytes or files over 1 MiB are
  refused as "not a text config file".
* Case: keys (``handler``, ``Wait_Time``...) and the section words ``order`` / ``job`` are
  case-insensitive, as keys are in configparser. Job names are case-sensitive and kept as
  written, but two names that differ only in case are an error (they would collide in file
  names on case-insensitive file systems and confuse people reading state names).
* Comments: full-line only, starting with ``#`` or ``;`` (leading whitespace allowed). Inline
  comments are NOT supported: ``wait_time = 10  # seconds`` gives the value ``10  # seconds``.
  S3 keys and file names may legitimately contain ``#`` and ``;``, so stripping them would
  silently change paths. A value that looks like it carries an inline comment gets a warning
  (and where it makes the value invalid, the error says so).
* Delimiter: only ``=``. A line ``key: value`` is an error that says to use ``=``.
* Interpolation: none. ``%`` is an ordinary character.
* Continuation lines: a line indented deeper than the key line right above it continues that
  value (as in configparser). Only the ``[order]`` lists may span lines (names still separated
  by commas); any other value spread over several lines is an error. A blank line ends a value;
  comment lines inside a value are skipped.
* Section headers: ``[order]`` and ``[job NAME]``; whitespace inside the brackets is ignored
  (``[ job  x ]`` is ``[job x]``). Anything else is an error with a did-you-mean.
* Job names: 1..64 characters from ``A-Z a-z 0-9 _ -``, not starting with ``-`` (it would read
  as a command-line option wherever the name reaches a shell command).
* ``handler``: a relative POSIX path inside the job's files; absolute paths, ``~``, ``..``
  components, backslashes, control characters and trailing ``/`` are refused (control
  characters: Unicode categories Cc, Cf, Zl and Zp, so C1 controls, U+2028 / U+2029 and bidi
  overrides such as U+202E too, in ``handler``, ``s3_uri`` and ``local_path`` alike). ``.`` components
  and doubled slashes are normalised away (``./src//a.sh`` -> ``src/a.sh``).
* ``local_path``: ``~`` is expanded; relative paths are relative to the config file's folder;
  the result is resolved (symlinks followed) and must exist as a readable file or folder. For a
  folder, the handler must be a file inside it; for a single file, the handler must be that
  file's name (the file is staged under its own name).
* ``s3_uri``: ``s3://BUCKET`` or ``s3://BUCKET/KEY-OR-PREFIX``. Bucket names follow the S3
  naming rules (3-63 characters, lowercase letters, digits, ``.`` and ``-``, starting and ending
  with a letter or digit, no ``..``, not an IP address). An empty key (``s3://bucket`` or
  ``s3://bucket/``) means the whole bucket: accepted, with a warning. Keys may not contain empty
  (``//``), ``.`` or ``..`` path segments (they would escape or confuse the staging folder) nor
  control characters, and are at most 1024 bytes. Nor ``,`` (the staging functions' S3 read
  permission is the CloudFormation list parameter JobSourceObjectArns, which a ``,`` would split
  into another ARN: ``s3://b/x,arn:aws:s3:::other/`` would grant a second bucket), nor ``"`` or
  backslash (samconfig.toml's parameter_overrides carries that parameter to ``sam deploy``, and the
  SAM CLI unescapes them). ``*``, ``?`` and ``$`` are fine: preprocess writes them as IAM's
  literal ``${*}``, ``${?}``, ``${$}``.
* ``wait_time``: ASCII digits only (surrounding whitespace ignored), value 1..240; a digit string
  of any length is an ordinary out-of-range problem, never Python's int() digit-limit error.
* Problems are rendered with every non-printable character (save the space) escaped as
  ``\\xNN`` / ``\\uNNNN``: nothing a config holds reaches the terminal raw.
* A ``[job X]`` section not listed in ``[order]`` is a warning (the job will not run); its
  contents are still checked, and errors in it are errors.
* `ConfigError.problems` holds the errors (sorted by line); the warnings found in the same pass
  are attached to the exception as ``.warnings``. A valid config keeps its warnings in
  `JobsConfig.warnings`.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from stepcluster import graph, inifile, resources
from stepcluster.errors import ConfigError, Problem
from stepcluster.errors import escape_unsafe as _escape_unsafe
from stepcluster.inifile import short as _short

__all__ = [
    "DEFAULT_WAIT_TIME",
    "MAX_WAIT_TIME",
    "MIN_WAIT_TIME",
    "JOB_NAME_RE",
    "JobSpec",
    "JobsConfig",
    "Problem",
    "load_jobs_config",
    "parse_jobs_config",
]

DEFAULT_WAIT_TIME = 10
MIN_WAIT_TIME = 1
MAX_WAIT_TIME = 240
MAX_CONFIG_BYTES = 1024 * 1024
MAX_JOB_NAME = 64
MAX_RETRIES = 10
#: [order] on_failure: "cancel" ends the run at the first failed job (the seed's rule);
#: "finish" lets the jobs that do not wait for a failed one finish first.
ON_FAILURE = ("cancel", "finish")
MAX_S3_KEY_BYTES = 1024

JOB_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
SECTION_WORDS = ("order", "job")

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_STATE_WORD_RE = re.compile(r"[A-Za-z][A-Za-z_]{0,39}")
#: Unicode categories refused in values and escaped in rendered problems: controls (C0, DEL, C1),
#: format characters (bidi overrides such as U+202E, zero-width ones), line and paragraph
#: separators (U+2028, U+2029), and lone surrogates (which cannot even be printed).
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))
#: Longest digit string read as a number (after leading zeros): far above any limit, far below
#: Python's int() digit limit, so a huge number is an ordinary "out of range" problem.
_MAX_INT_DIGITS = 18
_INLINE_COMMENT_RE = re.compile(r"\s[#;]")
#: How the reader names this grammar in its messages.
_WORDING = inifile.Wording(
    headers="[order] or [job NAME]",
    sections="an [order] section and [job NAME] sections",
    document="INI jobs config",
)


# --------------------------------------------------------------------------------------------
# Public data types


@dataclass(frozen=True)
class JobSpec:
    name: str
    handler: str
    s3_uri: str | None
    local_path: str | None
    wait_time: int
    resources: resources.Resources = resources.Resources()
    #: the jobs it waits for ([order] parallel only): it starts once every one has succeeded
    depends_on: tuple[str, ...] = ()
    #: submitted again up to this many times after a failure that `retry_on` names (exit codes
    #: as strings, scheduler state words; empty: any failure)
    retries: int = 0
    retry_on: tuple[str, ...] = ()
    #: where each key is written (key -> line; "" -> the [job NAME] header), for problems found
    #: later (a resource its scheduler cannot express, a refused scheduler option)
    lines: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class JobsConfig:
    path: str
    order: str
    jobs: tuple[JobSpec, ...]
    warnings: tuple[Problem, ...] = ()
    #: "cancel" (the first failed job ends the run) or "finish" (independent jobs go on first)
    on_failure: str = "cancel"

    def summary(self) -> str:
        names = [job.name for job in self.jobs]
        count = f"{len(names)} job" + ("" if len(names) == 1 else "s")
        if self.order == "parallel" and any(job.depends_on for job in self.jobs):
            levels = graph.levels({job.name: job.depends_on for job in self.jobs})
            shown = "; ".join(f"{i}: {_abbreviate(level, ', ')}" for i, level in enumerate(levels[:10]))
            more = f"; and {len(levels) - 10} more levels" if len(levels) > 10 else ""
            return _escape_unsafe(f"{self.path}: {count} in a graph of {len(levels)} levels "
                                  f"(each job after those it depends on): {shown}{more}")
        if self.order == "parallel":
            return _escape_unsafe(f"{self.path}: {count} in parallel: {_abbreviate(names, ', ')}")
        return _escape_unsafe(f"{self.path}: {count}, sequential: {_abbreviate(names, ' -> ')}")


def _abbreviate(names: list[str], sep: str, limit: int = 8, head: int = 4, tail: int = 2) -> str:
    if len(names) <= limit:
        return sep.join(names)
    hidden = len(names) - head - tail
    return sep.join(names[:head] + [f"... ({hidden} more)"] + names[-tail:])


# --------------------------------------------------------------------------------------------
# Entry points


def load_jobs_config(path) -> JobsConfig:
    """Read and check the jobs config at `path`; raise ConfigError listing every error."""
    shown = os.fsdecode(os.fspath(path))
    data, message, line = _read_bytes(path)
    if message is None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            message = (
                f"not a UTF-8 text file (undecodable byte 0x{data[exc.start]:02x}): "
                "the jobs config must be an INI text file"
            )
    if message is not None:
        # Raised outside any `except` block, so no chained traceback reaches the user.
        _fail(shown, message, line)
    base_dir = os.path.dirname(os.path.abspath(path))
    return parse_jobs_config(text, shown, base_dir)


def _read_bytes(path):
    """Return (data, None, None) or (None, message, None)."""
    try:
        if os.path.isdir(path):
            return None, "is a folder, not a jobs config file", None
        if os.path.exists(path) and not os.path.isfile(path):
            return None, "is not a regular file", None
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return None, "no such file", None
    except IsADirectoryError:
        return None, "is a folder, not a jobs config file", None
    except PermissionError:
        return None, "permission denied: cannot read the file", None
    except (OSError, ValueError) as exc:
        return None, f"cannot read the file: {getattr(exc, 'strerror', None) or exc}", None
    if len(data) > MAX_CONFIG_BYTES:
        return None, f"is larger than {MAX_CONFIG_BYTES // 1024} KiB: not a jobs config file", None
    return data, None, None


def parse_jobs_config(text: str, path: str, base_dir=None) -> JobsConfig:
    """Check the jobs config `text` (read from `path`, shown in messages).

    Relative ``local_path`` values are resolved against `base_dir` (default: the folder of
    `path`). Raises ConfigError listing every error; warnings go to `JobsConfig.warnings`.
    """
    shown = os.fsdecode(os.fspath(path))
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(shown))
    checker = _Checker(shown, os.fsdecode(os.fspath(base_dir)))
    return checker.run(text)


def _fail(path: str, message: str, line: int | None = None):
    _raise([Problem(path, line, None, None, message)], ())


def _raise(errors, warnings):
    exc = ConfigError(errors)
    exc.warnings = tuple(warnings)
    raise exc


# --------------------------------------------------------------------------------------------
# The checker: the INI reader's sections, read as the grammar


@dataclass(eq=False)
class _Header:
    """A section as the grammar reads its header: [order], [job NAME], or None (refused)."""

    section: inifile.Section
    kind: str | None  # "order" | "job" | None (invalid or duplicate header)
    name: str | None  # job name as written

    @property
    def raw(self) -> str:
        return self.section.raw

    @property
    def line(self) -> int:
        return self.section.line

    @property
    def entries(self) -> dict[str, inifile.Entry]:
        return self.section.entries


@dataclass
class _Field:
    """One key's value as its validator sees it: where it is, and what else is known."""

    checker: _Checker
    section: _Header
    entry: inifile.Entry
    checked: dict  # the section's keys validated before this one (local_path reads handler)

    def error(self, message: str) -> None:
        """Report `message` about this value. Returns None, so a validator can return it."""
        self.checker.error(self.entry.line, self.section.raw, self.entry.key, message)

    def warn(self, message: str) -> None:
        self.checker.warn(self.entry.line, self.section.raw, self.entry.key, message)


class _Checker:
    """One pass over one config: the problems found, the sections as the grammar reads them."""

    def __init__(self, path: str, base_dir: str):
        self.path = path
        self.base_dir = base_dir
        self.problems: list[Problem] = []
        self.sections: list[_Header] = []  # every well-formed header, in file order
        self.seen: dict[tuple[str, str], _Header] = {}  # (kind, name) -> its first section

    def error(self, line, section, key, message):
        self.problems.append(Problem(self.path, line, section, key, message))

    def warn(self, line, section, key, message):
        self.problems.append(Problem(self.path, line, section, key, message, "warning"))

    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)

    def run(self, text: str) -> JobsConfig:
        if not isinstance(text, str):
            _fail(self.path, "not a text config file")
        if "\x00" in text:
            _fail(self.path, "contains NUL bytes: a binary file, not an INI jobs config")
        if len(text.removeprefix("\ufeff")) > MAX_CONFIG_BYTES:
            _fail(
                self.path, f"is larger than {MAX_CONFIG_BYTES // 1024} KiB: not a jobs config file"
            )
        headers = inifile.read(text, self.error, self.header, _WORDING)
        result = None
        if not self.has_errors():
            result = self.check()
        elif headers:
            # Structural errors already: still check what can be checked, to report everything.
            self.check()
        errors = sorted((p for p in self.problems if p.severity == "error"), key=_problem_order)
        warnings = tuple(
            sorted((p for p in self.problems if p.severity == "warning"), key=_problem_order)
        )
        if result is None:  # there are errors: check() returns None after reporting one
            _raise(errors, warnings)
        order, jobs, options = result
        return JobsConfig(self.path, order, tuple(jobs), warnings, **options)

    def header(self, section: inifile.Section) -> bool:
        """The reader's `on_header`: classify the section; True if its keys are to be read."""
        kind, name, messages = _classify(section.raw)
        header = _Header(section, kind, name)
        self.sections.append(header)
        for message in messages:
            self.error(section.line, section.raw, None, message)
        if kind is None:
            return False
        first = self.seen.setdefault((kind, name or ""), header)
        if first is not header:
            self.error(
                section.line,
                section.raw,
                None,
                f"duplicate section: [{first.raw}] is already on line {first.line}",
            )
            header.kind = None  # do not check its keys a second time
            return False
        return True

    def check(self):
        """(order kind, [JobSpec] in order) if the file is valid; None otherwise."""
        orders = [s for s in self.sections if s.kind == "order"]
        job_sections = [s for s in self.sections if s.kind == "job"]
        self.check_case(job_sections)
        values = {s.name: _SectionKeys(self, s).check_job() for s in job_sections}
        if not orders:
            self.error(
                None,
                "order",
                None,
                "section is missing: add [order] with 'sequential = a, b' or 'parallel = a, b'",
            )
            return None
        order_kind, listed, options = _SectionKeys(self, orders[0]).check_order()
        if order_kind is None:
            # Still warn about sections nothing lists? Without a valid list we cannot say.
            return None
        for section in job_sections:
            if section.name not in listed and _job_name_problem(section.name) is None:
                self.warn(
                    section.line,
                    section.raw,
                    None,
                    f"job {section.name!r} is not listed in [order] {order_kind}, "
                    "so it will not run",
                )
        sections = {s.name: s for s in job_sections}
        self.check_graph(order_kind, listed, values, sections)
        if self.has_errors():
            return None
        return order_kind, [_job_spec(name, values[name], sections[name]) for name in listed], options

    def check_graph(self, order_kind: str, listed: list[str], values: dict, sections: dict) -> None:
        """Each depends_on names listed jobs other than its own, under [order] parallel, and
        the jobs' waits make no cycle (named as a path, at the line of its first job's key)."""
        waits: dict[str, tuple[str, ...]] = {}
        listed_set = set(listed)
        for name in listed:
            depends = (values.get(name) or {}).get("depends_on")
            entry = sections[name].entries.get("depends_on") if name in sections else None
            if depends is None or entry is None:
                continue

            def error(message, entry=entry, name=name):
                self.error(entry.line, sections[name].raw, entry.key, message)
            if order_kind == "sequential":
                error("needs [order] parallel: a sequential run is already a chain (each job "
                      "waits for the one before it); list the jobs under 'parallel' to make a graph")
                continue
            for other in depends:
                if other == name:
                    error(f"job {name!r} cannot depend on itself")
                elif other in listed_set:
                    continue
                elif other in sections:
                    error(f"job {other!r} is not listed in [order] parallel, so it never runs "
                          f"and {name!r} would wait for ever")
                else:
                    close = difflib.get_close_matches(other, listed, n=1, cutoff=0.7)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    error(f"job {other!r} has no [job {other}] section{hint}")
            waits[name] = tuple(o for o in depends if o in listed_set and o != name)
        cycle = graph.find_cycle({name: waits.get(name, ()) for name in listed})
        if cycle:
            first = sections[cycle[0]]
            entry = first.entries["depends_on"]
            self.error(entry.line, first.raw, entry.key,
                       f"the jobs wait for each other in a cycle: {' -> '.join(cycle)} "
                       "(each waits for the next): none of them could start")

    def check_case(self, job_sections: list[_Header]) -> None:
        """Job names that differ only in case."""
        by_fold: dict[str, _Header] = {}
        for section in job_sections:
            other = by_fold.setdefault(section.name.casefold(), section)
            if other.name != section.name:
                self.error(
                    section.line,
                    section.raw,
                    None,
                    f"job name {section.name!r} differs only in case from {other.name!r} "
                    f"(line {other.line}): job names must be unique ignoring case",
                )


class _SectionKeys:
    """The checks of one section's keys; problems go to the file's _Checker."""

    def __init__(self, checker: _Checker, section: _Header):
        self.checker = checker
        self.section = section
        self.entries = section.entries

    def error(self, entry: inifile.Entry | None, key: str | None, message: str) -> None:
        """Report `message` on the line of `entry` (None: of the section header)."""
        line = entry.line if entry is not None else self.section.line
        self.checker.error(line, self.section.raw, key, message)

    def validate(self, validator, entry: inifile.Entry, checked: dict):
        return validator(entry.value, _Field(self.checker, self.section, entry, checked))

    def check_order(self):
        """(kind, the job names listed, {option: value}) of the [order] section; (None, [], {})
        if it has no valid list."""
        for norm, entry in self.entries.items():
            if norm not in ORDER_KEYS:
                self.unknown_key(entry, ORDER_KEYS, JOB_KEYS, "[job NAME] sections")
        options = {}
        for key, validator in _ORDER_OPTIONS.items():
            entry = self.entries.get(key)
            if entry is not None:
                value = self.validate(validator, entry, {})
                if value is not None:
                    options[key] = value
        present = [self.entries[k] for k in _ORDER_VALIDATORS if k in self.entries]
        if not present:
            self.error(
                None,
                None,
                "needs exactly one of 'sequential' or 'parallel' "
                "(a comma-separated list of job names)",
            )
            return None, [], options
        if len(present) > 1:
            first, second = sorted(present, key=lambda e: e.line)
            self.error(
                second,
                second.key,
                f"'sequential' and 'parallel' are both set (the other on line {first.line}): "
                "set exactly one",
            )
            return None, [], options
        (entry,) = present
        names = self.validate(_ORDER_VALIDATORS[entry.norm], entry, {})
        return (None, [], options) if names is None else (entry.norm, names, options)

    def check_job(self) -> dict:
        """The checked values of a [job NAME] section, by key (problems reported as found)."""
        self.check_entries()
        skip = self.check_presence()
        values: dict = {}
        for key, validator in _JOB_VALIDATORS.items():
            entry = self.entries.get(key)
            if entry is not None and not entry.extra_lines and key not in skip:
                values[key] = self.validate(validator, entry, values)
        return values

    def check_entries(self) -> None:
        """Unknown keys, values over several lines, values that look like inline comments."""
        for norm, entry in self.entries.items():
            if norm not in JOB_KEYS:
                self.unknown_key(entry, JOB_KEYS, ORDER_KEYS, "the [order] section")
            elif entry.extra_lines:
                self.error(
                    entry,
                    entry.key,
                    f"must be on one line (line {entry.extra_lines[0]} is indented deeper, so it "
                    "is read as a continuation of this value)",
                )
        for norm, entry in self.entries.items():
            if norm in JOB_KEYS and norm not in _OWN_COMMENT_HINT and not entry.extra_lines:
                if _INLINE_COMMENT_RE.search(entry.value):
                    self.checker.warn(
                        entry.line,
                        self.section.raw,
                        entry.key,
                        f"{_short(entry.value)} looks like it ends with an inline comment; "
                        "inline comments are not supported, the whole text is used as the value",
                    )

    def check_presence(self) -> set[str]:
        """Keys required, keys of which exactly one is set; returns the keys not to validate."""
        for key, message in _REQUIRED_JOB_KEYS.items():
            if key not in self.entries:
                self.error(None, key, message)
        skip: set[str] = set()
        for group, message in _ONE_OF_JOB_KEYS.items():
            present = sorted(
                (self.entries[k] for k in group if k in self.entries), key=lambda e: e.line
            )
            if not present:
                self.error(None, None, message)
            elif len(present) > 1:
                earlier, later = present
                self.error(
                    later,
                    later.key,
                    f"both {group[0]!r} and {group[1]!r} are set (the other on line "
                    f"{earlier.line}): set exactly one",
                )
                skip.update(group)
        return skip

    def unknown_key(self, entry, allowed, elsewhere, where):
        guess = _suggest(entry.key, allowed)
        if guess:
            hint = f"; did you mean {guess!r}?"
        elif _suggest(entry.key, elsewhere) == entry.norm:
            hint = f"; {entry.norm!r} belongs in {where}"
        else:
            hint = ""
        self.error(entry, entry.key, f"unknown key (allowed: {', '.join(allowed)}){hint}")


def _problem_order(problem: Problem):
    return (problem.line is not None, problem.line or 0)


def _job_spec(name: str, values: dict, section: _Header) -> JobSpec:
    return JobSpec(
        name=name,
        handler=values["handler"],
        s3_uri=values.get("s3_uri"),
        local_path=values.get("local_path"),
        wait_time=values.get("wait_time", DEFAULT_WAIT_TIME),
        depends_on=values.get("depends_on") or (),
        retries=values.get("retries") or 0,
        retry_on=values.get("retry_on") or (),
        resources=resources.Resources(**{
            field: values[key] for key, field in _RESOURCE_FIELDS.items() if values.get(key) is not None}),
        lines={"": section.line, **{key: entry.line for key, entry in section.entries.items()}},
    )


def _suggest(word: str, candidates) -> str:
    probe = word.lower().replace("-", "_").replace(" ", "_")
    if probe in candidates:
        return probe
    matches = difflib.get_close_matches(probe, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else ""


def _classify(raw: str):
    """(kind, job name, problems) of the section header [raw] (not empty: the reader's)."""
    words = raw.split()
    word, rest = words[0].lower(), words[1:]
    if word == "order":
        # Reported, but still read as the [order] section so it is not also "missing".
        problems = ["the [order] section takes no name: write just [order]"] if rest else []
        return "order", None, problems
    if word == "job":
        if not rest:
            return None, None, ["a job section needs a name: [job NAME]"]
        name = " ".join(rest)
        problem = _job_name_problem(name)
        return "job", name, [problem] if problem else []
    guess = _suggest(word, SECTION_WORDS)
    if guess == "job":
        hint = f"; did you mean [job {' '.join(rest) or 'NAME'}]?"
    elif guess == "order":
        hint = "; did you mean [order]?"
    else:
        hint = ""
    return None, None, [f"unknown section [{raw}]: only [order] and [job NAME] are allowed{hint}"]


def _job_name_problem(name: str) -> str | None:
    if not name:
        return "a job name cannot be empty"
    if any(ch.isspace() for ch in name):
        return (
            f"job name {_short(name)} contains spaces: use letters, digits, '_' and '-' "
            f"(1 to {MAX_JOB_NAME} characters)"
        )
    if len(name) > MAX_JOB_NAME:
        return f"job name is {len(name)} characters long: at most {MAX_JOB_NAME} allowed"
    if not JOB_NAME_RE.fullmatch(name):
        bad = sorted({ch for ch in name if not re.fullmatch(r"[A-Za-z0-9_-]", ch)})
        shown = " ".join(repr(ch) for ch in bad)
        return (
            f"job name {_short(name)} contains {shown}: only letters, digits, '_' and '-' are "
            "allowed (names end up in state names, file names and shell commands)"
        )
    if name.startswith("-"):
        return (
            f"job name {name!r} starts with '-': it would read as a command-line option; "
            "start it with a letter, digit or '_'"
        )
    return None


def _has_unsafe_chars(value: str) -> bool:
    """True if `value` holds a control, format or separator character (see above)."""
    return bool(_CONTROL_RE.search(value)) or any(
        unicodedata.category(ch) in _UNSAFE_CATEGORIES for ch in value if ord(ch) >= 0x7F
    )


def _small_int(text: str, low: int, high: int) -> int | None:
    """The ASCII-digit string `text` as an int if it lies in low..high; None otherwise (also for
    a digit string too long to be one: never Python's int() digit-limit ValueError)."""
    if not re.fullmatch(r"[0-9]+", text):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > _MAX_INT_DIGITS:
        return None
    number = int(digits)
    return number if low <= number <= high else None


# --------------------------------------------------------------------------------------------
# The validators: one per key. Each takes the value as written (one line, stripped) and its
# _Field, reports what is wrong through field.error / field.warn, and returns the value to use
# (None when it is invalid).


def _job_list(value: str, field: _Field) -> list[str] | None:
    """``sequential`` / ``parallel``: job names, comma-separated, each with a [job NAME]."""
    items = _list_items(value, field)
    if items is None:
        return None
    headers = [s for s in field.checker.sections if s.name is not None]
    defined = dict.fromkeys(s.name for s in headers)  # in file order
    defined_fold = {s.name.casefold(): s.name for s in headers}
    listed_fold = {i.casefold() for i in items if i}
    names = _names_in(items, field)
    for item in names:
        if item not in defined:
            if item.casefold() in defined_fold:
                hint = (
                    f"; did you mean [job {defined_fold[item.casefold()]}]? "
                    "(names are case-sensitive)"
                )
            else:
                # Suggest only sections nothing else lists: those are the likely typos.
                spare = [n for n in defined if n.casefold() not in listed_fold]
                close = difflib.get_close_matches(item, spare, n=1, cutoff=0.7)
                hint = f"; did you mean {close[0]!r}?" if close else ""
            field.error(f"job {item!r} is listed but there is no [job {item}] section{hint}")
    # Even with errors in the list, return the names so the caller can still warn about
    # unlisted sections in the same pass.
    return names


def _names_in(items: list[str], field: _Field) -> list[str]:
    """The job names of a list's non-empty items, in order; what is wrong with the others
    (not a name, listed twice) reported."""
    seen: dict[str, str] = {}
    names: list[str] = []
    for item in (i for i in items if i):
        problem = _list_item_problem(item, seen)
        if problem:
            field.error(problem)
            continue
        seen[item.casefold()] = item
        names.append(item)
    return names


def _list_items(value: str, field: _Field) -> list[str] | None:
    """The comma-separated items of a job list (reporting empty ones); None if it has none."""
    if not value:
        return field.error("empty list: name at least one job, e.g. 'first, second'")
    items = [item.strip() for item in value.split(",")]
    if not any(items):
        return field.error("empty list: only commas, no job names")
    for index, item in enumerate(items):
        if item:
            continue
        if index == len(items) - 1:
            field.error(
                f"trailing comma after {items[index - 1]!r}"
                if items[index - 1]
                else "trailing comma"
            )
        elif index == 0:
            field.error("leading comma: the list starts with an empty job name")
        elif items[index - 1]:
            field.error(f"doubled comma after {items[index - 1]!r}: empty job name in the list")
    return items


def _list_item_problem(item: str, seen: dict[str, str]) -> str | None:
    """What is wrong with one (non-empty) job name of a list, given the names before it."""
    if any(ch.isspace() for ch in item):
        if _INLINE_COMMENT_RE.search(" " + item):
            return (
                f"{_short(item)} is not a job name: inline comments are not supported "
                "(put comments on their own line)"
            )
        return f"{_short(item)} is not a job name: separate job names with commas"
    problem = _job_name_problem(item)
    if problem:
        return f"{_short(item)}: {problem}"
    folded = item.casefold()
    if folded in seen:
        same = (
            ""
            if seen[folded] == item
            else f" (as {seen[folded]!r}; names are compared ignoring case)"
        )
        return f"job {item!r} is listed more than once{same}"
    return None


def _handler(value: str, field: _Field) -> str | None:
    """``handler``: a relative POSIX path inside the job's files, normalised."""
    if not value:
        return field.error("is empty: name the script to run, relative to the job's files")
    if _has_unsafe_chars(value):
        return field.error(
            f"contains control or invisible formatting characters: {_short(value)}"
        )
    if value.startswith("/"):
        return field.error(
            f"must be a path relative to the job's files, not an absolute path: {_short(value)}"
        )
    if value.startswith("~"):
        return field.error(
            f"must be a path relative to the job's files ('~' is not expanded): {_short(value)}"
        )
    if "\\" in value:
        return field.error(f"use '/' to separate folders, not '\\': {_short(value)}")
    if value.endswith("/"):
        return field.error(f"must name a file, not a folder: {_short(value)}")
    parts = value.split("/")
    if ".." in parts:
        return field.error(
            f"must stay inside the job's files: '..' is not allowed: {_short(value)}"
        )
    kept = [p for p in parts if p not in ("", ".")]
    if not kept:
        return field.error(f"must name a file inside the job's files: {_short(value)}")
    return "/".join(kept)


def _s3_uri(value: str, field: _Field) -> str | None:
    """``s3_uri``: s3://BUCKET or s3://BUCKET/KEY-OR-PREFIX, kept as written."""
    message, warning = _s3_uri_problem(value)
    if message:
        return field.error(message)
    if warning:
        field.warn(warning)
    return value


def _s3_uri_problem(value: str):
    """Return (error message or None, warning or None)."""
    expected = "expected s3://BUCKET/KEY-OR-PREFIX"
    if not value:
        return f"is empty: {expected}", None
    if _has_unsafe_chars(value):
        return f"contains control or invisible formatting characters: {_short(value)}", None
    lowered = value.lower()
    if lowered.startswith(("http://", "https://")):
        return f"{expected}, not an HTTP(S) URL: {_short(value)}", None
    if not value.startswith("s3://"):
        if lowered.startswith("s3://"):
            return f"{expected} (lowercase 's3://'): {_short(value)}", None
        return f"{expected}, got {_short(value)}", None
    bucket, _, key = value[len("s3://") :].partition("/")
    if not bucket:
        return f"the bucket name is missing: {expected}, got {_short(value)}", None
    problem = _bucket_problem(bucket)
    if problem:
        return f"invalid bucket name {_short(bucket)}: {problem}", None
    if not key:
        return None, (
            f"{_short(value)} names the whole bucket: every object in it will be staged "
            "(add a key or prefix to stage less)"
        )
    return _s3_key_problem(key, value), None


def _s3_key_problem(key: str, value: str) -> str | None:
    """What is wrong with the (non-empty) key of the s3_uri `value`; None if nothing."""
    if len(key.encode("utf-8", "surrogatepass")) > MAX_S3_KEY_BYTES:
        return f"the key is longer than {MAX_S3_KEY_BYTES} bytes"
    segments = key.split("/")
    inner = segments[:-1] if segments[-1] == "" else segments
    if "" in inner:
        return f"the key has an empty path segment ('//'): {_short(value)}"
    if "." in inner or ".." in inner:
        return f"the key has a '.' or '..' path segment: {_short(value)}"
    if "," in key:
        return (
            f"the key contains ',', which would split the staging functions' S3 read permission "
            f"(JobSourceObjectArns, a comma-separated CloudFormation list) into another ARN: "
            f"rename the objects (or the prefix) without ',': {_short(value)}"
        )
    quoted = [name for char, name in (('"', 'a double quote (")'), ("\\", "a backslash (\\)"))
              if char in key]
    if quoted:
        return (
            f"the key contains {' and '.join(quoted)}, which samconfig.toml's "
            f"parameter_overrides cannot carry to `sam deploy` unchanged (the SAM CLI unescapes "
            f"them): rename the objects (or the prefix) without them: {_short(value)}"
        )
    return None


def _bucket_problem(bucket: str) -> str | None:
    rules = (
        "3 to 63 characters: lowercase letters, digits, '.' and '-', "
        "starting and ending with a letter or digit"
    )
    if not 3 <= len(bucket) <= 63:
        return f"must be {rules} (it has {len(bucket)})"
    if not _BUCKET_RE.fullmatch(bucket):
        return f"must be {rules}"
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        return "must not contain '..', '.-' or '-.'"
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        return None
    return "must not be formatted as an IP address"


def _local_path(value: str, field: _Field) -> str | None:
    """``local_path``: an existing, readable file or folder that holds the handler."""
    if not value:
        return field.error(
            "is empty: give a file or folder, relative to the config file or absolute"
        )
    if _has_unsafe_chars(value):
        return field.error(
            f"contains control or invisible formatting characters: {_short(value)}"
        )
    try:
        expanded = os.path.expanduser(value)
        target = Path(field.checker.base_dir, expanded).resolve()
        exists = target.exists()
        is_dir = target.is_dir()
        is_file = target.is_file()
    except (OSError, ValueError, RuntimeError) as exc:
        return field.error(f"cannot use {_short(value)}: {exc}")
    shown = (
        _short(value)
        if os.path.isabs(expanded)
        else f"{_short(value)} (resolved to {str(target)!r})"
    )
    if not exists:
        return field.error(f"does not exist: {shown}")
    if not (is_dir or is_file):
        return field.error(f"is neither a file nor a folder: {shown}")
    if not os.access(target, os.R_OK) or (is_dir and not os.access(target, os.X_OK)):
        return field.error(f"is not readable: {shown}")
    message = _handler_in(target, is_dir, field.checked.get("handler"), shown)
    if message:
        return field.error(message)
    return str(target)


def _handler_in(target: Path, is_dir: bool, handler: str | None, shown: str) -> str | None:
    """What is wrong with running `handler` from the local_path `target`; None if nothing."""
    if handler is None:
        return None  # missing or invalid: reported with the handler
    if is_dir:
        try:
            candidate = target / handler
            found = candidate.is_file()
            folder = candidate.is_dir()
        except (OSError, ValueError):
            found = folder = False
        if not found:
            what = "is a folder, not a file" if folder else "is not a file in it"
            return f"the handler {handler!r} {what}: {shown}"
    elif handler != target.name:
        return (
            f"is a single file {target.name!r}, so the handler must be {target.name!r} "
            f"(got {handler!r}); point local_path at a folder to run another file"
        )
    return None


def _wait_time(value: str, field: _Field) -> int | None:
    """``wait_time``: whole seconds, MIN_WAIT_TIME..MAX_WAIT_TIME."""
    number = _small_int(value, MIN_WAIT_TIME, MAX_WAIT_TIME)
    if number is not None:
        return number
    hint = ""
    if _INLINE_COMMENT_RE.search(value):
        hint = " (inline comments are not supported: put comments on their own line)"
    return field.error(
        f"must be an integer from {MIN_WAIT_TIME} to {MAX_WAIT_TIME} (seconds), "
        f"got {_short(value)}{hint}"
    )


def _depends_on(value: str, field: _Field) -> tuple[str, ...] | None:
    """``depends_on``: the jobs this one waits for, comma-separated (checked against [order]
    once the whole file is read: `_Checker.check_graph`)."""
    items = _list_items(value, field)
    return None if items is None else tuple(_names_in(items, field))


def _retries(value: str, field: _Field) -> int | None:
    """``retries``: how many times a failed job is submitted again, 0..MAX_RETRIES."""
    number = _small_int(value, 0, MAX_RETRIES)
    if number is None:
        return field.error(f"must be an integer from 0 to {MAX_RETRIES} (times a failed job is "
                           f"submitted again), got {_short(value)}")
    return number


def _retry_on(value: str, field: _Field) -> tuple[str, ...] | None:
    """``retry_on``: the failures worth a retry, comma-separated: exit codes (1..255; a job
    killed by signal N also counts as 128+N, as a shell reports it) and the scheduler's state
    words (NODE_FAIL, PREEMPTED, TIMEOUT, OUT_OF_MEMORY, ...)."""
    items = [item.strip() for item in value.split(",")]
    if not any(items):
        return field.error("empty list: name exit codes or scheduler states, e.g. '137, NODE_FAIL'")
    found: list[str] = []
    for item in items:
        if not item:
            field.error("empty item in the list (a stray comma)")
        elif item.isdigit():
            code = _small_int(item, 1, 255)
            if code is None:
                field.error(f"{_short(item)} is not an exit code a retry can follow (1 to 255)")
            elif str(code) not in found:
                found.append(str(code))
        elif _STATE_WORD_RE.fullmatch(item):
            if item.upper() not in found:
                found.append(item.upper())
        else:
            field.error(f"{_short(item)} is neither an exit code nor a scheduler state word "
                        "(letters and _, e.g. NODE_FAIL)")
    if "retries" not in field.section.entries:
        field.warn("has no effect without 'retries = N' (the job is not retried)")
    return tuple(found)


def _on_failure(value: str, field: _Field) -> str | None:
    """``on_failure`` in [order]: cancel (default) or finish."""
    if value in ON_FAILURE:
        return value
    return field.error(f"must be one of {', '.join(ON_FAILURE)} (what a failed job does to the "
                       f"rest of the run), got {_short(value)}")


def _resource(parse):
    """A validator from one of `resources`' parsers: (value, None) or (None, what is wrong)."""

    def validate(value: str, field: _Field):
        parsed, problem = parse(value)
        return parsed if problem is None else field.error(problem)

    validate.__doc__ = parse.__doc__
    return validate


# --------------------------------------------------------------------------------------------
# The grammar's keys: adding one is a validator above and an entry here.

#: [order]: the key names the order, its value lists the jobs.
_ORDER_VALIDATORS = {
    "sequential": _job_list,
    "parallel": _job_list,
}
#: [job NAME], in the order they are checked (local_path reads the checked handler).
_JOB_VALIDATORS = {
    "handler": _handler,
    "s3_uri": _s3_uri,
    "local_path": _local_path,
    "wait_time": _wait_time,
    # what the job asks of the scheduler (beyond the seed's grammar; README "Resources")
    "nodes": _resource(resources.parse_count),
    "tasks": _resource(resources.parse_count),
    "cpus_per_task": _resource(resources.parse_count),
    "memory": _resource(resources.parse_memory),
    "time_limit": _resource(resources.parse_time_limit),
    "queue": _resource(resources.parse_queue),
    "scheduler_options": _resource(resources.parse_options),
    "array": _resource(resources.parse_array),
    # a graph, and second chances (beyond the seed's grammar; README "Workflows")
    "depends_on": _depends_on,
    "retries": _retries,
    "retry_on": _retry_on,
}
#: resource keys -> the fields of `resources.Resources` they fill
_RESOURCE_FIELDS = {"nodes": "nodes", "tasks": "tasks", "cpus_per_task": "cpus_per_task",
                    "memory": "memory_kib", "time_limit": "time_limit", "queue": "queue",
                    "scheduler_options": "scheduler_options", "array": "array"}
#: [order]'s other keys: how the run goes on.
_ORDER_OPTIONS = {
    "on_failure": _on_failure,
}
ORDER_KEYS = (*_ORDER_VALIDATORS, *_ORDER_OPTIONS)
JOB_KEYS = tuple(_JOB_VALIDATORS)
#: Job keys whose validator points out an inline comment itself: the others get a warning when
#: their value looks like it ends with one.
_OWN_COMMENT_HINT = frozenset(("wait_time", "scheduler_options"))
#: Job keys that must be set, with the message when one is not.
_REQUIRED_JOB_KEYS = {
    "handler": "missing: name the script to run, e.g. 'handler = run.sh'",
}
#: Pairs of job keys of which exactly one must be set, with the message when neither is.
_ONE_OF_JOB_KEYS = {
    ("s3_uri", "local_path"): (
        "needs exactly one of 's3_uri' or 'local_path' (where the job's files are)"
    ),
}
