"""A small INI reader that keeps line numbers: text in, sections and their entries out.

It knows INI's syntax, not any grammar written in it: which sections and keys exist, and what
their values mean, is the caller's business (`stepcluster.config` for the jobs config). Every
problem is reported through the caller's `report(line, section, key, message)` callback, in
the order found, and reading goes on after it, so that one pass finds them all. Nothing it
reads can raise.

Reading rules:

* A leading UTF-8 BOM (U+FEFF) is dropped. Lines end at ``\\r\\n``, ``\\r`` or ``\\n``; lines
  are numbered from 1.
* Blank lines are skipped (and end a value, see below). Comments are full lines whose first
  non-blank character is ``#`` or ``;``; there are no inline comments (``#`` and ``;`` inside a
  line are ordinary characters).
* A line whose first non-blank character is ``[`` is a section header. It must end with ``]``
  (else "malformed section header"); the text between the brackets, stripped, is the section's
  `Section.raw` and may not be empty. The caller's `on_header` decides, for each well-formed
  header, whether the section's entries are recorded (a section it refuses, or a malformed or
  empty one, still takes the lines that follow, and its entries are read but dropped).
* Any other line is an entry ``key = value``: split at the first ``=``, key and value
  stripped. A line without ``=`` is an error (with a hint to use ``=`` when it holds ``:``), so
  is an empty key, and so is a key set twice in one section (keys are compared ignoring case).
  There is no interpolation: ``%`` is an ordinary character.
* A line indented deeper than the entry right above it continues that entry's value (as in
  configparser): its stripped text is added to `Entry.parts` and its number to
  `Entry.extra_lines`. A blank line or a header ends the value; comment lines inside it are
  skipped.
* Lines before the first header are "text outside any section"; a file with no header at all
  is "not INI", and a file with nothing but blank and comment lines is "empty".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Entry", "Section", "Wording", "read", "short"]

#: report(line, section, key, message): line None is the whole file, section the header text.
Report = Callable[[int | None, str | None, str | None, str], None]

_NEWLINE_RE = re.compile(r"\r\n|\r|\n")


@dataclass
class Entry:
    """One ``key = value`` of a section, with the lines it spans."""

    key: str  # as written (stripped)
    line: int
    indent: int
    parts: list[str]  # the value on the key's line, then each continuation line, stripped
    extra_lines: list[int] = field(default_factory=list)  # the continuation lines

    @property
    def value(self) -> str:
        """The parts joined with single spaces (empty parts left out)."""
        return " ".join(p for p in self.parts if p).strip()

    @property
    def norm(self) -> str:
        """The key as compared: lowercase."""
        return self.key.lower()


@dataclass(eq=False)
class Section:
    """A ``[header]`` and the entries below it, by `Entry.norm`, in file order."""

    raw: str  # the text between the brackets, stripped (a malformed header: the whole line)
    line: int
    entries: dict[str, Entry] = field(default_factory=dict)


@dataclass(frozen=True)
class Wording:
    """How the caller's grammar is named in the reader's messages."""

    headers: str = "[NAME]"  # the headers a file may hold
    sections: str = "[NAME] sections"  # what a file is made of
    document: str = "INI file"  # what the file is, after "not an"


def short(value: str, limit: int = 80) -> str:
    """`value` quoted for a message (its repr), cut to about `limit` characters."""
    if len(value) > limit:
        value = value[: limit - 3] + "..."
    return repr(value)


def read(
    text: str,
    report: Report,
    on_header: Callable[[Section], bool] | None = None,
    wording: Wording = Wording(),
) -> list[Section]:
    """Read `text` into its sections (every header, in file order), reporting each problem.

    `on_header(section)` is called as each well-formed header is read; it may report problems
    about the header itself, and returns whether the section's entries are to be recorded.
    """
    reader = _Reader(report, on_header or (lambda section: True), wording)
    if text.startswith("\ufeff"):
        text = text[1:]
    for number, line in enumerate(_NEWLINE_RE.split(text), start=1):
        reader.line(number, line)
    reader.finish()
    return reader.sections


class _Reader:
    """The state between lines: the current section, the entry a deeper line would continue."""

    def __init__(self, report: Report, on_header, wording: Wording):
        self.report = report
        self.on_header = on_header
        self.wording = wording
        self.sections: list[Section] = []
        self.current: Section | None = None
        self.recording = False  # whether the current section's entries are kept
        self.last: Entry | None = None  # the value a deeper-indented line would continue
        self.outside: list[int] = []  # the lines before the first header
        self.meaningful = False  # whether a line is neither blank nor a comment

    def line(self, number: int, raw: str) -> None:
        stripped = raw.strip()
        if not stripped:
            self.last = None
            return
        if stripped[0] in "#;":
            return
        self.meaningful = True
        indent = len(raw) - len(raw.lstrip())
        if stripped.startswith("["):
            self.last = None
            self.header(stripped, number)
        elif self.last is not None and indent > self.last.indent:
            self.last.parts.append(stripped)
            self.last.extra_lines.append(number)
        elif self.current is None:
            self.outside.append(number)
        else:
            self.last = None
            self.entry(stripped, number, indent)

    def header(self, stripped: str, number: int) -> None:
        expected = self.wording.headers
        if not stripped.endswith("]"):
            self.open(Section(stripped, number))
            self.report(
                number,
                None,
                None,
                f"malformed section header {short(stripped)}: expected {expected} "
                "alone on its line (inline comments are not supported)",
            )
            return
        section = self.open(Section(stripped[1:-1].strip(), number))
        if not section.raw:
            self.report(number, None, None, f"empty section header []: expected {expected}")
            return
        self.recording = self.on_header(section)

    def open(self, section: Section) -> Section:
        self.sections.append(section)
        self.current = section
        self.recording = False
        return section

    def entry(self, stripped: str, number: int, indent: int) -> None:
        section = self.current
        if "=" not in stripped:
            hint = " (use '=' rather than ':')" if ":" in stripped else ""
            self.report(
                number, section.raw, None, f"expected 'key = value', got {short(stripped)}{hint}"
            )
            return
        key, _, value = stripped.partition("=")
        key = key.strip()
        if not key:
            self.report(number, section.raw, None, f"a value without a key: {short(stripped)}")
            return
        entry = Entry(key, number, indent, [value.strip()])
        self.last = entry
        if not self.recording:
            return  # the header was refused (and reported): its keys mean nothing
        previous = section.entries.get(entry.norm)
        if previous is not None:
            self.report(
                number, section.raw, key, f"duplicate key: already set on line {previous.line}"
            )
            return
        section.entries[entry.norm] = entry

    def finish(self) -> None:
        """The whole-file problems, once every line is read."""
        sections = self.wording.sections
        if not self.meaningful:
            self.report(None, None, None, f"the file is empty: expected {sections}")
        elif not self.sections:
            self.report(
                self.outside[0],  # every line is outside: a continuation needs an entry
                None,
                None,
                f"no [section] headers found: not an {self.wording.document} "
                f"(expected {sections})",
            )
        elif self.outside:
            count = len(self.outside)
            self.report(
                self.outside[0],
                None,
                None,
                f"text outside any section ({count} line{'s' if count > 1 else ''} before the "
                f"first [section] header)",
            )
