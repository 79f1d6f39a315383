"""The scheduler options written in a handler (`#SBATCH`, `#$`, `#PBS`), read as the scheduler
reads them, and the options that would break how stepcluster tracks a job.

The scheduler is handed stepcluster's job wrapper, not the handler, so the wrapper carries the
handler's directive lines in its own header (`jobscripts.wrapper_script`): the scheduler then
reads them with its own rules, and the command line, which holds the config's resource keys and
the options stepcluster tracks the job by (job name, output paths, working folder), wins over
them, as it does for every scheduler. This module decides which lines those are and which
options can be let through:

- OVERRIDDEN: stepcluster sets this option on the command line itself (the job's stdout/stderr
  paths, working folder, name, shell): the handler's value is read by the scheduler and then
  replaced. `validate` warns about it.
- REFUSED: the option would make the job untrackable or change what a run means (wait for the
  job, hold it, chain it, make it an array, wipe the environment the wrapper needs): the job is
  not submitted, and the cause names the file, the line and why.

In `scheduler_options` (the config key) both kinds are refused: the config sets them nowhere else.
Each adapter declares its syntax and rules as data (`Scheduler.DIRECTIVES`, `OPTION_RULES`).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

OVERRIDDEN = "overridden"
REFUSED = "refused"
#: Directives are read from this much of a handler: a script's header, or a Grid Engine script's
#: whole text up to this size; larger files are programs or data, which hold no directives.
MAX_SCRIPT_BYTES = 256 * 1024


@dataclass(frozen=True)
class DirectiveSyntax:
    """How one scheduler finds its options in a script."""

    prefix: str                 # "#SBATCH", "#$", "#PBS"
    #: True: every line starting with the prefix counts (Grid Engine); False: only those before
    #: the first line that is neither blank nor a comment (Slurm, Torque/PBS)
    whole_file: bool
    #: options are parsed with getopt: short options may carry their value attached ("-ofile")
    #: or be bundled ("-HW"), long ones may be abbreviated to a unique prefix ("--dep")
    getopt: bool
    #: short options that take no value (only with getopt: where a bundle goes on)
    short_flags: str = ""
    documented: str = ""


@dataclass(frozen=True)
class OptionRule:
    names: tuple[str, ...]              # every spelling: ("-o", "--output")
    effect: str                         # OVERRIDDEN | REFUSED
    why: str
    takes_value: bool = True
    #: only when the value says so (e.g. --export=NONE, -sync y); None: always
    when: Callable[[str], bool] | None = None


@dataclass(frozen=True)
class Directive:
    line: int                   # 1-based line in the handler
    text: str                   # the line as written
    options: tuple[str, ...]    # its words after the prefix, up to a comment


@dataclass(frozen=True)
class Finding:
    """An option some rule is about, where it was written."""

    option: str                 # as written: "--wait", "-sync y", "--export=NONE"
    rule: OptionRule
    line: int                   # in the handler
    text: str                   # the directive line

    @property
    def refused(self) -> bool:
        return self.rule.effect == REFUSED

    def message(self) -> str:
        """What is wrong, without where: "'#SBATCH --wait': --wait is refused: ..."."""
        verb = "is refused" if self.refused else "is overridden"
        return f"{self.text.strip()!r}: {self.option} {verb}: {self.rule.why}"

    def describe(self, where: str) -> str:
        return f"{where} line {self.line}: {self.message()}"


def split_options(text: str) -> tuple[str, ...]:
    """A directive's words, split like a shell would; a word starting with '#' begins a comment
    (as in sh, and as sbatch reads `#SBATCH --ntasks=2  # two tasks`). Unbalanced quotes: the
    words up to the quote, the rest as one word (the scheduler will complain)."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    words = []
    try:
        for word in lexer:
            if word.startswith("#"):
                break
            words.append(word)
    except ValueError:
        words.append(text.split(maxsplit=len(words))[-1] if words else text)
    return tuple(words)


def read_directives(text: str, syntax: DirectiveSyntax) -> list[Directive]:
    """The directive lines of a script, as its scheduler finds them."""
    return directives_of(_candidate_lines(text, syntax), syntax)


def staged_directives(data: bytes, syntax: DirectiveSyntax) -> list[Directive]:
    """The directives of a handler whose bytes are at hand (ssh staging): the lines the head
    node's AWK_CANDIDATES would send for the staged file, whole lines up to MAX_SCRIPT_BYTES of
    them; a program (ELF) has none."""
    if not is_script(data):
        return []
    kept, size = [], 0
    for number, line in _candidate_lines(data.decode(errors="replace"), syntax):
        size += len(f"{number}\t{line}\n".encode())
        if size > MAX_SCRIPT_BYTES:
            break
        kept.append((number, line))
    return directives_of(kept, syntax)


def _candidate_lines(text: str, syntax: DirectiveSyntax):
    """(line number, line) of the lines that begin with the prefix, up to the first command
    where the scheduler stops there. `AWK_CANDIDATES` is the same rule, run on the head node."""
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.startswith(syntax.prefix):
            yield number, line
        elif not syntax.whole_file and line.strip(" \t") and not line.lstrip(" \t").startswith("#"):
            return   # the first command: Slurm and PBS stop reading here


def directives_of(numbered, syntax: DirectiveSyntax) -> list[Directive]:
    """Directives from (line number, line) pairs that begin with the prefix: the prefix must be
    followed by a blank or end the line ("#SBATCHX" is a comment)."""
    n = len(syntax.prefix)
    return [Directive(number, line, split_options(line[n:])) for number, line in numbered
            if line.startswith(syntax.prefix) and (len(line) == n or line[n] in " \t")]


#: `_candidate_lines` as an awk program, so that the head node sends only those lines of a
#: handler whose files it staged itself ("NR<TAB>line"). -v prefix=..., -v whole=0|1.
AWK_CANDIDATES = (r'{ sub(/\r$/, "") } index($0, prefix) == 1 { print NR "\t" $0; next } '
                  r'!whole && $0 !~ /^[ \t]*(#|$)/ { exit }')


def parse_candidates(output: str) -> list[tuple[int, str]]:
    """AWK_CANDIDATES' output as (line number, line) pairs."""
    pairs = []
    for row in output.splitlines():
        number, tab, line = row.partition("\t")
        if tab and number.isdigit():
            pairs.append((int(number), line))
    return pairs


def is_script(data: bytes) -> bool:
    """Programs (ELF) carry no directives; anything else is read as text."""
    return not data.startswith(b"\x7fELF")


def find(options: Sequence[str], syntax: DirectiveSyntax, rules: Iterable[OptionRule]) -> list[tuple[str, OptionRule]]:
    """(option as written, rule) for every option in `options` that a rule is about."""
    rules = list(rules)
    found: list[tuple[str, OptionRule]] = []
    i = 0
    while i < len(options):
        word, i = options[i], i + 1
        if not word.startswith("-") or len(word) < 2:
            continue    # a value of an option no rule is about
        if word.startswith("--") or not syntax.getopt:
            name, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
            rule = _rule(name, syntax, rules)
            if rule and rule.takes_value and not eq and i < len(options):
                value, i = options[i], i + 1
                word = f"{word} {value}"
            if rule and (rule.when is None or rule.when(value)):
                found.append((word, rule))
            continue
        # getopt short options: "-W", "-HW" (a bundle of flags), "-ofile" / "-o file"
        for k, letter in enumerate(word[1:], start=1):
            rule = _rule(f"-{letter}", syntax, rules)
            takes_value = rule.takes_value if rule else letter not in syntax.short_flags
            if not takes_value:
                if rule and rule.when is None:
                    found.append((f"-{letter}", rule))
                continue
            value = word[k + 1:]
            if not value and i < len(options):
                value, i = options[i], i + 1
            if rule and (rule.when is None or rule.when(value)):
                found.append((f"-{letter} {value}".strip(), rule))
            break   # the rest of the word (or the next word) was this option's value
    return found


def _rule(name: str, syntax: DirectiveSyntax, rules: list[OptionRule]) -> OptionRule | None:
    exact = next((r for r in rules if name in r.names), None)
    if exact or not (syntax.getopt and name.startswith("--") and len(name) >= 4):
        return exact
    # getopt_long takes any unique prefix: "--dep" is "--dependency" (an ambiguous one is
    # refused by the scheduler itself, so matching the first is safe)
    return next((r for r in rules for n in r.names if n.startswith(name)), None)


def value_lacks(word: str) -> Callable[[str], bool]:
    """A `when` for list values: true when the comma-separated value does not hold `word`
    (Slurm --export=NONE or --export=VAR: no ALL, so the submission environment is gone)."""
    return lambda value: word not in [v.strip().upper() for v in value.split(",")]


def value_is(pattern: str) -> Callable[[str], bool]:
    compiled = re.compile(pattern, re.IGNORECASE)
    return lambda value: bool(compiled.fullmatch(value.strip()))


def value_has(pattern: str) -> Callable[[str], bool]:
    compiled = re.compile(pattern, re.IGNORECASE)
    return lambda value: bool(compiled.search(value))
