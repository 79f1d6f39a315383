"""The jobs config: which jobs to run, in which order, and where their files come from.

Grammar (the contract is the user's docs, docs "Jobs Config")::

    [order]
    sequential = prepare, simulate, report      # exactly one of sequential / parallel

    [job prepare]
    handler = src/prepare.sh                    # relative path inside the job's files
    s3_uri = s3://my-bucket/projects/prepare/   # exactly one of s3_uri / local_path
    wait_time = 30                              # optional, integer seconds 1..240, default 10

The file is read by a small INI reader of our own (not configparser) so that every problem can
be reported with its line, and so that nothing the user writes can end in a traceback. Every
problem found in one pass is reported at once, as a `ConfigError` holding `Problem`s.

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

from stepcluster.errors import ConfigError

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
MAX_S3_KEY_BYTES = 1024

JOB_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
ORDER_KEYS = ("sequential", "parallel")
JOB_KEYS = ("handler", "s3_uri", "local_path", "wait_time")
SECTION_WORDS = ("order", "job")

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
#: Unicode categories refused in values and escaped in rendered problems: controls (C0, DEL, C1),
#: format characters (bidi overrides such as U+202E, zero-width ones), line and paragraph
#: separators (U+2028, U+2029), and lone surrogates (which cannot even be printed).
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))
#: Longest digit string read as a number (after leading zeros): far above any limit, far below
#: Python's int() digit limit, so a huge number is an ordinary "out of range" problem.
_MAX_INT_DIGITS = 18


def _has_unsafe_chars(value: str) -> bool:
    """True if `value` holds a control, format or separator character (see above)."""
    return bool(_CONTROL_RE.search(value)) or any(
        unicodedata.category(ch) in _UNSAFE_CATEGORIES for ch in value if ord(ch) >= 0x7F
    )


def _escape_unsafe(text: str) -> str:
    """`text` with every character that is not printable (save the space) written as
    \\xNN, \\uNNNN or \\UNNNNNNNN, so that nothing printed can drive a terminal."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == " " or ch.isprintable():
            out.append(ch)
            continue
        code = ord(ch)
        if code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


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
_INLINE_COMMENT_RE = re.compile(r"\s[#;]")
_NEWLINE_RE = re.compile(r"\r\n|\r|\n")


# --------------------------------------------------------------------------------------------
# Public data types


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) in a config file, with where it is."""

    path: str
    line: int | None
    section: str | None
    key: str | None
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        location = self.path if self.line is None else f"{self.path}:{self.line}"
        parts = [f"{location}:"]
        if self.severity in ("warning", "note"):
            parts.append(f"{self.severity}:")
        if self.section is not None:
            parts.append(f"[{self.section}]")
        if self.key is not None:
            parts.append(f"{self.key}:")
        parts.append(self.message)
        # Every field may hold what the user wrote (a path, a section, a key): escaped, so that no
        # control, bidi or separator character reaches the terminal raw.
        return _escape_unsafe(" ".join(parts))


@dataclass(frozen=True)
class JobSpec:
    name: str
    handler: str
    s3_uri: str | None
    local_path: str | None
    wait_time: int


@dataclass(frozen=True)
class JobsConfig:
    path: str
    order: str
    jobs: tuple[JobSpec, ...]
    warnings: tuple[Problem, ...] = ()

    def summary(self) -> str:
        names = [job.name for job in self.jobs]
        count = f"{len(names)} job" + ("" if len(names) == 1 else "s")
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
# The INI reader


@dataclass
class _Entry:
    key: str  # as written (stripped)
    line: int
    indent: int
    parts: list[str]
    extra_lines: list[int] = field(default_factory=list)

    @property
    def value(self) -> str:
        return " ".join(p for p in self.parts if p).strip()

    @property
    def norm(self) -> str:
        return self.key.lower()


@dataclass
class _Section:
    raw: str  # text between the brackets, stripped
    line: int
    kind: str | None  # "order" | "job" | None (invalid header)
    name: str | None  # job name as written
    entries: dict[str, _Entry] = field(default_factory=dict)


def _short(value: str, limit: int = 80) -> str:
    if len(value) > limit:
        value = value[: limit - 3] + "..."
    return repr(value)


def _suggest(word: str, candidates) -> str:
    probe = word.lower().replace("-", "_").replace(" ", "_")
    if probe in candidates:
        return probe
    matches = difflib.get_close_matches(probe, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else ""


class _Checker:
    def __init__(self, path: str, base_dir: str):
        self.path = path
        self.base_dir = base_dir
        self.problems: list[Problem] = []
        self.sections: list[_Section] = []

    # -- reporting -----------------------------------------------------------------------

    def error(self, line, section, key, message):
        self.problems.append(Problem(self.path, line, section, key, message))

    def warn(self, line, section, key, message):
        self.problems.append(Problem(self.path, line, section, key, message, "warning"))

    # -- main ----------------------------------------------------------------------------

    def run(self, text: str) -> JobsConfig:
        if not isinstance(text, str):
            _fail(self.path, "not a text config file")
        if text.startswith("\ufeff"):
            text = text[1:]
        if "\x00" in text:
            _fail(self.path, "contains NUL bytes: a binary file, not an INI jobs config")
        if len(text) > MAX_CONFIG_BYTES:
            _fail(
                self.path, f"is larger than {MAX_CONFIG_BYTES // 1024} KiB: not a jobs config file"
            )

        self.read(_NEWLINE_RE.split(text))
        result = None
        if not any(p.severity == "error" for p in self.problems):
            result = self.check()
        elif self.sections:
            # Structural errors already: still check what can be checked, to report everything.
            self.check()

        errors = sorted((p for p in self.problems if p.severity == "error"), key=_problem_order)
        warnings = tuple(
            sorted((p for p in self.problems if p.severity == "warning"), key=_problem_order)
        )
        if errors or result is None:
            _raise(errors, warnings)
        order, jobs = result
        return JobsConfig(self.path, order, tuple(jobs), warnings)

    def read(self, lines: list[str]) -> None:
        current: _Section | None = None
        last: _Entry | None = None  # the value a deeper-indented line would continue
        seen: dict[tuple[str, str], _Section] = {}
        outside: list[int] = []
        meaningful = 0

        for number, raw in enumerate(lines, start=1):
            stripped = raw.strip()
            if not stripped:
                last = None
                continue
            if stripped[0] in "#;":
                continue
            meaningful += 1
            indent = len(raw) - len(raw.lstrip())

            if stripped.startswith("["):
                last = None
                current = self.header(stripped, number, seen)
                continue

            if last is not None and indent > last.indent:
                last.parts.append(stripped)
                last.extra_lines.append(number)
                continue

            if current is None:
                outside.append(number)
                continue

            last = None
            if "=" not in stripped:
                hint = " (use '=' rather than ':')" if ":" in stripped else ""
                self.error(
                    number,
                    current.raw,
                    None,
                    f"expected 'key = value', got {_short(stripped)}{hint}",
                )
                continue
            key, _, value = stripped.partition("=")
            key = key.strip()
            if not key:
                self.error(number, current.raw, None, f"a value without a key: {_short(stripped)}")
                continue
            entry = _Entry(key, number, indent, [value.strip()])
            last = entry
            if current.kind is None:
                continue  # the header was already reported; its keys mean nothing
            previous = current.entries.get(entry.norm)
            if previous is not None:
                self.error(
                    number,
                    current.raw,
                    key,
                    f"duplicate key: already set on line {previous.line}",
                )
                continue
            current.entries[entry.norm] = entry

        if meaningful == 0:
            self.error(
                None,
                None,
                None,
                "the file is empty: expected an [order] section and [job NAME] sections",
            )
        elif not self.sections:
            self.error(
                outside[0] if outside else None,
                None,
                None,
                "no [section] headers found: not an INI jobs config "
                "(expected an [order] section and [job NAME] sections)",
            )
        elif outside:
            count = len(outside)
            self.error(
                outside[0],
                None,
                None,
                f"text outside any section ({count} line{'s' if count > 1 else ''} before the "
                f"first [section] header)",
            )

    def header(self, stripped: str, number: int, seen) -> _Section | None:
        if not stripped.endswith("]"):
            self.error(
                number,
                None,
                None,
                f"malformed section header {_short(stripped)}: expected [order] or [job NAME] "
                "alone on its line (inline comments are not supported)",
            )
            section = _Section(stripped, number, None, None)
            self.sections.append(section)
            return section
        raw = stripped[1:-1].strip()
        section = _Section(raw, number, None, None)
        self.sections.append(section)
        words = raw.split()
        if not words:
            self.error(
                number, None, None, "empty section header []: expected [order] or [job NAME]"
            )
            return section
        word = words[0].lower()
        rest = words[1:]
        if word == "order":
            if rest:
                # Reported, but still read as the [order] section so it is not also "missing".
                self.error(
                    number, raw, None, "the [order] section takes no name: write just [order]"
                )
            section.kind = "order"
        elif word == "job":
            if not rest:
                self.error(number, raw, None, "a job section needs a name: [job NAME]")
                return section
            name = " ".join(rest)
            section.name = name
            problem = _job_name_problem(name)
            if problem:
                self.error(number, raw, None, problem)
            section.kind = "job"
        else:
            guess = _suggest(word, SECTION_WORDS)
            if guess == "job":
                hint = f"; did you mean [job {' '.join(rest) or 'NAME'}]?"
            elif guess == "order":
                hint = "; did you mean [order]?"
            else:
                hint = ""
            self.error(
                number,
                raw,
                None,
                f"unknown section [{raw}]: only [order] and [job NAME] are allowed{hint}",
            )
            return section

        ident = (section.kind, section.name or "")
        first = seen.get(ident)
        if first is not None:
            self.error(
                number,
                raw,
                None,
                f"duplicate section: [{first.raw}] is already on line {first.line}",
            )
            section.kind = None  # do not check its keys a second time
            return section
        seen[ident] = section
        return section

    # -- semantic checks -------------------------------------------------------------------

    def check(self):
        orders = [s for s in self.sections if s.kind == "order"]
        job_sections = [s for s in self.sections if s.kind == "job"]
        all_job_headers = [s for s in self.sections if s.name is not None]

        # Job names that differ only in case.
        by_fold: dict[str, _Section] = {}
        for section in job_sections:
            folded = section.name.casefold()
            other = by_fold.get(folded)
            if other is not None and other.name != section.name:
                self.error(
                    section.line,
                    section.raw,
                    None,
                    f"job name {section.name!r} differs only in case from {other.name!r} "
                    f"(line {other.line}): job names must be unique ignoring case",
                )
            else:
                by_fold.setdefault(folded, section)

        specs: dict[str, JobSpec] = {}
        for section in job_sections:
            spec = self.check_job(section)
            if spec is not None:
                specs[section.name] = spec

        if not orders:
            self.error(
                None,
                "order",
                None,
                "section is missing: add [order] with 'sequential = a, b' or 'parallel = a, b'",
            )
            return None
        order_kind, listed = self.check_order(orders[0], all_job_headers)
        if order_kind is None:
            # Still warn about sections nothing lists? Without a valid list we cannot say.
            return None

        listed_names = set(listed)
        for section in job_sections:
            if section.name not in listed_names and _job_name_problem(section.name) is None:
                self.warn(
                    section.line,
                    section.raw,
                    None,
                    f"job {section.name!r} is not listed in [order] {order_kind}, "
                    "so it will not run",
                )

        if any(p.severity == "error" for p in self.problems):
            return None
        return order_kind, [specs[name] for name in listed]

    def check_order(self, section: _Section, job_headers: list[_Section]):
        present = [section.entries[k] for k in ORDER_KEYS if k in section.entries]
        for norm, entry in section.entries.items():
            if norm in ORDER_KEYS:
                continue
            self.unknown_key(section, entry, ORDER_KEYS, JOB_KEYS, "[job NAME] sections")

        if not present:
            self.error(
                section.line,
                section.raw,
                None,
                "needs exactly one of 'sequential' or 'parallel' "
                "(a comma-separated list of job names)",
            )
            return None, []
        if len(present) > 1:
            first, second = sorted(present, key=lambda e: e.line)
            self.error(
                second.line,
                section.raw,
                second.key,
                f"'sequential' and 'parallel' are both set (the other on line {first.line}): "
                "set exactly one",
            )
            return None, []

        entry = present[0]
        kind = entry.norm
        value = entry.value
        names: list[str] = []

        def bad(message):
            self.error(entry.line, section.raw, entry.key, message)

        if not value:
            bad("empty list: name at least one job, e.g. 'first, second'")
            return None, []
        items = [item.strip() for item in value.split(",")]
        if not any(items):
            bad("empty list: only commas, no job names")
            return None, []
        for index, item in enumerate(items):
            if item:
                continue
            if index == len(items) - 1:
                bad(
                    f"trailing comma after {items[index - 1]!r}"
                    if items[index - 1]
                    else "trailing comma"
                )
            elif index == 0:
                bad("leading comma: the list starts with an empty job name")
            elif items[index - 1]:
                bad(f"doubled comma after {items[index - 1]!r}: empty job name in the list")
        seen: dict[str, str] = {}
        listed_fold = {i.casefold() for i in items if i}
        defined = {s.name: s for s in job_headers}
        defined_fold = {s.name.casefold(): s for s in job_headers}
        for item in (i for i in items if i):
            if any(ch.isspace() for ch in item):
                comment = _INLINE_COMMENT_RE.search(" " + item)
                if comment:
                    bad(
                        f"{_short(item)} is not a job name: inline comments are not supported "
                        "(put comments on their own line)"
                    )
                else:
                    bad(f"{_short(item)} is not a job name: separate job names with commas")
                continue
            problem = _job_name_problem(item)
            if problem:
                bad(f"{_short(item)}: {problem}")
                continue
            folded = item.casefold()
            if folded in seen:
                same = (
                    ""
                    if seen[folded] == item
                    else f" (as {seen[folded]!r}; names are compared ignoring case)"
                )
                bad(f"job {item!r} is listed more than once{same}")
                continue
            seen[folded] = item
            names.append(item)
            if item not in defined:
                if folded in defined_fold:
                    hint = (
                        f"; did you mean [job {defined_fold[folded].name}]? "
                        "(names are case-sensitive)"
                    )
                else:
                    # Suggest only sections nothing else lists: those are the likely typos.
                    spare = [n for n in defined if n.casefold() not in listed_fold]
                    close = difflib.get_close_matches(item, spare, n=1, cutoff=0.7)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                bad(f"job {item!r} is listed but there is no [job {item}] section{hint}")
        # Even with errors in the list, return the kind so the caller can still warn about
        # unlisted sections in the same pass.
        return kind, names

    def check_job(self, section: _Section) -> JobSpec | None:
        raw = section.raw
        entries = section.entries
        ok = True

        def bad(entry_or_none, key, message):
            nonlocal ok
            ok = False
            line = entry_or_none.line if entry_or_none is not None else section.line
            self.error(line, raw, key, message)

        for norm, entry in entries.items():
            if norm not in JOB_KEYS:
                ok = False
                self.unknown_key(section, entry, JOB_KEYS, ORDER_KEYS, "the [order] section")
            elif entry.extra_lines:
                bad(
                    entry,
                    entry.key,
                    f"must be on one line (line {entry.extra_lines[0]} is indented deeper, so it "
                    "is read as a continuation of this value)",
                )

        for entry in entries.values():
            if entry.norm in JOB_KEYS and not entry.extra_lines:
                value = entry.value
                if entry.norm != "wait_time" and _INLINE_COMMENT_RE.search(value):
                    self.warn(
                        entry.line,
                        raw,
                        entry.key,
                        f"{_short(value)} looks like it ends with an inline comment; inline "
                        "comments are not supported, the whole text is used as the value",
                    )

        def single(norm):
            entry = entries.get(norm)
            if entry is None or entry.extra_lines:
                return entry, None
            return entry, entry.value

        handler_entry, handler = single("handler")
        if handler_entry is None:
            bad(None, "handler", "missing: name the script to run, e.g. 'handler = run.sh'")
            handler = None
        elif handler is not None:
            handler, message = _check_handler(handler)
            if message:
                bad(handler_entry, handler_entry.key, message)
                handler = None

        s3_entry, s3_uri = single("s3_uri")
        local_entry, local_value = single("local_path")
        local_path = None
        if s3_entry is not None and local_entry is not None:
            later = max(s3_entry, local_entry, key=lambda e: e.line)
            earlier = min(s3_entry, local_entry, key=lambda e: e.line)
            bad(
                later,
                later.key,
                f"both 's3_uri' and 'local_path' are set (the other on line {earlier.line}): "
                "set exactly one",
            )
        elif s3_entry is None and local_entry is None:
            bad(
                None,
                None,
                "needs exactly one of 's3_uri' or 'local_path' (where the job's files are)",
            )
        elif s3_entry is not None and s3_uri is not None:
            message, warning = _check_s3_uri(s3_uri)
            if message:
                bad(s3_entry, s3_entry.key, message)
            elif warning:
                self.warn(s3_entry.line, raw, s3_entry.key, warning)
        elif local_entry is not None and local_value is not None:
            local_path, message = self.check_local_path(local_value, handler)
            if message:
                bad(local_entry, local_entry.key, message)

        wait_entry, wait_value = single("wait_time")
        wait_time = DEFAULT_WAIT_TIME
        if wait_entry is not None and wait_value is not None:
            number = _small_int(wait_value, MIN_WAIT_TIME, MAX_WAIT_TIME)
            if number is not None:
                wait_time = number
            else:
                hint = ""
                if _INLINE_COMMENT_RE.search(wait_value):
                    hint = " (inline comments are not supported: put comments on their own line)"
                bad(
                    wait_entry,
                    wait_entry.key,
                    f"must be an integer from {MIN_WAIT_TIME} to {MAX_WAIT_TIME} (seconds), "
                    f"got {_short(wait_value)}{hint}",
                )

        if not ok or section.name is None or _job_name_problem(section.name):
            return None
        if any(
            p.severity == "error" and p.line == section.line and p.section == raw
            for p in self.problems
        ):
            return None
        return JobSpec(
            name=section.name,
            handler=handler,
            s3_uri=s3_uri if s3_entry is not None else None,
            local_path=local_path,
            wait_time=wait_time,
        )

    def unknown_key(self, section, entry, allowed, elsewhere, where):
        guess = _suggest(entry.key, allowed)
        if guess:
            hint = f"; did you mean {guess!r}?"
        elif _suggest(entry.key, elsewhere) == entry.norm:
            hint = f"; {entry.norm!r} belongs in {where}"
        else:
            hint = ""
        self.error(
            entry.line,
            section.raw,
            entry.key,
            f"unknown key (allowed: {', '.join(allowed)}){hint}",
        )

    def check_local_path(self, value: str, handler: str | None):
        if not value:
            return None, "is empty: give a file or folder, relative to the config file or absolute"
        if _has_unsafe_chars(value):
            return None, f"contains control or invisible formatting characters: {_short(value)}"
        try:
            expanded = os.path.expanduser(value)
            target = Path(self.base_dir, expanded).resolve()
            exists = target.exists()
            is_dir = target.is_dir()
            is_file = target.is_file()
        except (OSError, ValueError, RuntimeError) as exc:
            return None, f"cannot use {_short(value)}: {exc}"
        shown = (
            _short(value)
            if os.path.isabs(expanded)
            else f"{_short(value)} (resolved to {str(target)!r})"
        )
        if not exists:
            return None, f"does not exist: {shown}"
        if not (is_dir or is_file):
            return None, f"is neither a file nor a folder: {shown}"
        if not os.access(target, os.R_OK) or (is_dir and not os.access(target, os.X_OK)):
            return None, f"is not readable: {shown}"
        if handler is not None:
            if is_dir:
                try:
                    candidate = target / handler
                    found = candidate.is_file()
                    folder = candidate.is_dir()
                except (OSError, ValueError):
                    found = folder = False
                if not found:
                    what = "is a folder, not a file" if folder else "is not a file in it"
                    return None, f"the handler {handler!r} {what}: {shown}"
            elif handler != target.name:
                return None, (
                    f"is a single file {target.name!r}, so the handler must be {target.name!r} "
                    f"(got {handler!r}); point local_path at a folder to run another file"
                )
        return str(target), None


def _problem_order(problem: Problem):
    return (problem.line is not None, problem.line or 0)


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


def _check_handler(value: str):
    """Return (normalised handler, None) or (None, message)."""
    if not value:
        return None, "is empty: name the script to run, relative to the job's files"
    if _has_unsafe_chars(value):
        return None, f"contains control or invisible formatting characters: {_short(value)}"
    if value.startswith("/"):
        return None, (
            f"must be a path relative to the job's files, not an absolute path: {_short(value)}"
        )
    if value.startswith("~"):
        return (
            None,
            f"must be a path relative to the job's files ('~' is not expanded): {_short(value)}",
        )
    if "\\" in value:
        return None, f"use '/' to separate folders, not '\\': {_short(value)}"
    if value.endswith("/"):
        return None, f"must name a file, not a folder: {_short(value)}"
    parts = value.split("/")
    if ".." in parts:
        return None, f"must stay inside the job's files: '..' is not allowed: {_short(value)}"
    kept = [p for p in parts if p not in ("", ".")]
    if not kept:
        return None, f"must name a file inside the job's files: {_short(value)}"
    return "/".join(kept), None


def _check_s3_uri(value: str):
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
    rest = value[len("s3://") :]
    bucket, slash, key = rest.partition("/")
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
    if len(key.encode("utf-8", "surrogatepass")) > MAX_S3_KEY_BYTES:
        return f"the key is longer than {MAX_S3_KEY_BYTES} bytes", None
    segments = key.split("/")
    inner = segments[:-1] if segments[-1] == "" else segments
    if "" in inner:
        return f"the key has an empty path segment ('//'): {_short(value)}", None
    if "." in inner or ".." in inner:
        return f"the key has a '.' or '..' path segment: {_short(value)}", None
    if "," in key:
        return (
            f"the key contains ',', which would split the staging functions' S3 read permission "
            f"(JobSourceObjectArns, a comma-separated CloudFormation list) into another ARN: "
            f"rename the objects (or the prefix) without ',': {_short(value)}"
        ), None
    quoted = [name for char, name in (('"', 'a double quote (")'), ("\\", "a backslash (\\)"))
              if char in key]
    if quoted:
        return (
            f"the key contains {' and '.join(quoted)}, which samconfig.toml's "
            f"parameter_overrides cannot carry to `sam deploy` unchanged (the SAM CLI unescapes "
            f"them): rename the objects (or the prefix) without them: {_short(value)}"
        ), None
    return None, None


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
