"""Property-based tests of the jobs config parser (issue 8, section 2).

Configs are generated from the README's grammar ("The jobs config"), valid ones and ones with one
thing wrong, and checked against an oracle written from those rules (not from the parser):

* the parser only ever returns a JobsConfig or raises ConfigError holding Problems, whatever
  the text (odd characters, huge numbers, duplicate names, missing keys, random text);
* every Problem renders as one printable line (nothing that can drive a terminal);
* a valid config is accepted with the jobs, their order and their values as written;
* each rule broken makes it a ConfigError, with a problem on the line that breaks it.

Profiles: the default runs a few hundred examples per test in seconds (CI); `HYPOTHESIS_PROFILE=fuzz`
runs 100,000 per test (`--hypothesis-show-statistics` prints the figures; the module lifts
pytest-timeout's 300 s for it).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, assume, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stepcluster.config import JobsConfig, Problem, parse_jobs_config  # noqa: E402
from stepcluster.errors import ConfigError  # noqa: E402

# No example database (failing examples are printed, with a @seed); no explain phase (slow).
# Hypothesis still writes caches to .hypothesis/ in the working folder: it belongs in .gitignore.
_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)
settings.register_profile(
    "stepcluster-ci", max_examples=150, deadline=None, database=None, phases=_PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    # STEPCLUSTER_FUZZ_EXAMPLES (or HYPOTHESIS_FUZZ_EXAMPLES) sets the count per test.
    "fuzz", deadline=None,
    max_examples=int(os.environ.get("STEPCLUSTER_FUZZ_EXAMPLES")
                     or os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES") or 100_000), database=None, phases=_PHASES,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "stepcluster-ci"))
if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz":
    pytestmark = pytest.mark.timeout(0)  # a fuzz run takes far longer than pytest-timeout's 300 s

PATH = "jobs.ini"

# The job files local_path jobs point at: made once (hypothesis reruns a test body many times,
# so pytest's function-scoped tmp_path does not fit).
ROOT = Path(tempfile.mkdtemp(prefix="stepcluster-props-")).resolve()
(ROOT / "jobs" / "prepare" / "bin").mkdir(parents=True)
(ROOT / "jobs" / "prepare" / "run.sh").write_text("true\n")
(ROOT / "jobs" / "prepare" / "bin" / "sim.sh").write_text("true\n")
(ROOT / "single.sh").write_text("true\n")
LOCAL_SOURCES = [  # (local_path as written, the handlers it has, what JobSpec.local_path is)
    ("jobs/prepare", ("run.sh", "bin/sim.sh"), str(ROOT / "jobs" / "prepare")),
    (str(ROOT / "jobs" / "prepare"), ("run.sh", "bin/sim.sh"), str(ROOT / "jobs" / "prepare")),
    ("single.sh", ("single.sh",), str(ROOT / "single.sh")),
]

#: What the README, issue 8 and the grammar's docs refuse inside handler / s3_uri / local_path:
#: controls (C0 but the line breaks, DEL, C1), bidi and other format characters, U+2028/U+2029.
#: (NUL is left out here: it makes the whole file "binary", a problem with no line.)
UNSAFE_CHARS = (
    [chr(c) for c in range(0x01, 0x20) if chr(c) not in "\n\r"]
    + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]
    + ["\u2028", "\u2029", "\u202e", "\u202d", "\u2066", "\u200b", "\u200e", "\ufeff", "\u00ad"]
)


# --------------------------------------------------------------------------------------------
# The model of a config, and its text


@dataclass
class Job:
    name: str
    handler: str
    source: tuple  # ("s3_uri", uri) | ("local_path", as written, resolved)
    wait_time: int | None
    key_order: list = field(default_factory=lambda: ["handler", "source", "wait_time"])
    extra: list = field(default_factory=list)  # further (key, value) lines, for mutations


@dataclass
class Config:
    kind: str  # sequential | parallel
    listed: list  # names in [order], as written
    jobs: list  # Job, in section order
    order_at: int = 0  # where the [order] section goes among the job sections
    sep: str = ", "
    eq: str = " = "
    comments: bool = False
    blank: str = "\n"
    order_lines: list = field(default_factory=list)  # extra lines in [order], for mutations
    header_extra: dict = field(default_factory=dict)  # name -> header text, for mutations


def render(config: Config):
    """The config's text, and where each (section, key) went: {(name or 'order', key): line}."""
    lines: list[str] = []
    where: dict = {}

    def emit(text, at=None):
        lines.append(text)
        if at is not None:
            where[at] = len(lines)
        if config.comments and len(lines) % 3 == 0:
            lines.append("# a comment; with ; and # inside")

    def order_section():
        emit("[order]", ("order", None))
        emit(f"{config.kind}{config.eq}{config.sep.join(config.listed)}", ("order", config.kind))
        for key, value in config.order_lines:
            emit(f"{key}{config.eq}{value}", ("order", key))
        lines.append("")

    for index, job in enumerate(config.jobs):
        if index == config.order_at:
            order_section()
        emit(config.header_extra.get(job.name, f"[job {job.name}]"), (job.name, None))
        for part in job.key_order:
            if part == "handler" and job.handler is not None:
                emit(f"handler{config.eq}{job.handler}", (job.name, "handler"))
            elif part == "source":
                for key, value in _sources(job):
                    emit(f"{key}{config.eq}{value}", (job.name, key))
            elif part == "wait_time" and job.wait_time is not None:
                emit(f"wait_time{config.eq}{job.wait_time}", (job.name, "wait_time"))
        for key, value in job.extra:
            emit(f"{key}{config.eq}{value}", (job.name, key))
        lines.append("")
    if config.order_at >= len(config.jobs):
        order_section()
    return config.blank.join(lines) + config.blank, where


def _sources(job: Job):
    if job.source is None:
        return []
    if job.source[0] == "both":
        return [("s3_uri", job.source[1]), ("local_path", job.source[2])]
    return [(job.source[0], job.source[1])]


# --------------------------------------------------------------------------------------------
# Strategies, from the README's grammar

# "Job names: letters, digits, `_` and `-`, at most 64" (not starting with '-': the grammar's
# docs; such names are left to the invalid side).
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"


def _word(first, rest, max_size, min_size=0):
    return st.builds(str.__add__, st.sampled_from(first), st.text(rest, min_size=min_size, max_size=max_size))


names = _word(ALNUM + "_", ALNUM + "_-", 63)
segment = _word(ALNUM + "_", ALNUM + "_.+@=-", 15)
handlers = st.lists(segment, min_size=1, max_size=3).map("/".join)
buckets = st.builds(str.__add__, _word(LOWER, LOWER + "-", 30, min_size=1), st.sampled_from(LOWER))
# S3 keys: any character but '/', ',', '"', '\' (README), controls, format characters and
# separators (issue 8), and spaces (a value's ends are stripped; kept out to keep the oracle exact).
key_chars = st.characters(
    exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
    exclude_characters='/,"\\',
)
key_segments = st.text(key_chars, min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
s3_keys = st.builds(
    lambda parts, slash: "/".join(parts) + ("/" if slash else ""),
    st.lists(key_segments, min_size=1, max_size=4),
    st.booleans(),
)
s3_uris = st.builds(lambda b, k: f"s3://{b}/{k}", buckets, s3_keys)


@st.composite
def _job_bodies(draw):
    if draw(st.booleans()):
        source = ("s3_uri", draw(s3_uris))
        handler = draw(handlers)
    else:
        written, inside, resolved = draw(st.sampled_from(LOCAL_SOURCES))
        source = ("local_path", written, resolved)
        handler = draw(st.sampled_from(inside))
    wait_time = draw(st.none() | st.integers(1, 240))
    key_order = draw(st.permutations(["handler", "source", "wait_time"]))
    return Job("", handler, source, wait_time, list(key_order))


JOB_BODIES = _job_bodies()  # one strategy object, drawn from many times (cheaper than new ones)
KINDS = st.sampled_from(["sequential", "parallel"])
SEPS = st.sampled_from([", ", ",", " , ", ",\t"])
EQS = st.sampled_from([" = ", "=", " =", "= ", "\t=\t"])
NEWLINES = st.sampled_from(["\n", "\r\n"])
LISTED = st.lists(names, min_size=1, max_size=6, unique_by=str.casefold)
SPARE = st.lists(names, max_size=2, unique_by=str.casefold)


@st.composite
def valid_configs(draw):
    listed = draw(LISTED)
    spare = [n for n in draw(SPARE) if n.casefold() not in {m.casefold() for m in listed}]
    sections = [replace(draw(JOB_BODIES), name=n) for n in listed + spare]
    rng = draw(st.randoms(use_true_random=False))
    rng.shuffle(sections)
    return Config(
        kind=draw(KINDS),
        listed=listed,
        jobs=sections,
        order_at=rng.randint(0, len(sections)),
        sep=draw(SEPS),
        eq=draw(EQS),
        comments=draw(st.booleans()),
        blank=draw(NEWLINES),
    )


def expected_specs(config: Config):
    """The oracle: what the README says a valid config means."""
    by_name = {job.name: job for job in config.jobs}
    out = []
    for name in config.listed:
        job = by_name[name]
        out.append({
            "name": name,
            "handler": job.handler,
            "s3_uri": job.source[1] if job.source[0] == "s3_uri" else None,
            "local_path": job.source[2] if job.source[0] == "local_path" else None,
            "wait_time": 10 if job.wait_time is None else job.wait_time,  # "default 10"
        })
    return out


# --------------------------------------------------------------------------------------------
# Checks every outcome must pass


def outcome(text: str, base_dir=ROOT):
    """parse_jobs_config's result or its ConfigError; anything else fails the test."""
    try:
        result = parse_jobs_config(text, PATH, base_dir)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError must carry at least one problem"
        for problem in exc.problems:
            assert isinstance(problem, Problem) and problem.severity == "error"
        for problem in exc.problems + tuple(getattr(exc, "warnings", ())):
            check_rendering(problem)
        return exc
    assert isinstance(result, JobsConfig)
    for problem in result.warnings:
        check_rendering(problem)
    assert result.summary().isprintable()
    return result


def check_rendering(problem: Problem):
    rendered = str(problem)
    assert rendered.isprintable(), repr(rendered)
    assert rendered.startswith(f"{PATH}:")
    assert problem.line is None or problem.line >= 1


# --------------------------------------------------------------------------------------------
# Properties


@given(valid_configs())
def test_a_valid_config_is_accepted_with_its_jobs_in_order(config):
    text, _ = render(config)
    note(text)
    result = outcome(text)
    assert isinstance(result, JobsConfig), "\n".join(map(str, result.problems))
    assert result.order == config.kind
    got = [
        {"name": j.name, "handler": j.handler, "s3_uri": j.s3_uri, "local_path": j.local_path,
         "wait_time": j.wait_time}
        for j in result.jobs
    ]
    assert got == expected_specs(config)
    # "A [job X] section that [order] does not list is a warning (it will not run)."
    unlisted = {j.name for j in config.jobs} - set(config.listed)
    warned = {p.section for p in result.warnings}
    assert {f"job {n}" for n in unlisted} <= warned


def _huge_numbers():
    return st.one_of(
        (st.sampled_from([19, 4300, 4301, 5000]) | st.integers(4, 6000)).map(lambda n: "9" * n),
        st.tuples(st.integers(300, 6000), st.integers(1, 10**18)).map(  # cheap to draw
            lambda t: (str(t[1]) * (t[0] // len(str(t[1])) + 1))[: t[0]]),
        st.integers(241, 10**30).map(str),
        st.sampled_from(["0", "00", "-5", "+5", "1e2", "10.0", "ten", "0x10", "1_0", "10 # s"]),
    )


def _unsafe(text_strategy):
    return st.tuples(text_strategy, st.sampled_from(UNSAFE_CHARS), st.integers(0, 100)).map(
        lambda t: t[0][: t[2] % (len(t[0]) + 1)] + t[1] + t[0][t[2] % (len(t[0]) + 1):]
    )


@st.composite
def broken_configs(draw):
    """(config, what is wrong, the (section, key) whose line must carry a problem, or None)."""
    config = draw(valid_configs())
    job = draw(st.sampled_from([j for j in config.jobs if j.name in config.listed]))
    rule = draw(st.sampled_from([
        "huge wait_time", "unsafe handler", "unsafe s3 key", "s3 key , \" \\", "absolute handler",
        "dotdot handler", "missing handler", "no source", "both sources", "unknown key",
        "listed twice", "listed without section", "bad name", "long name", "duplicate key",
        "both order kinds", "trailing comma", "no such local_path", "duplicate section",
    ]))
    at = None
    if rule == "huge wait_time":
        job.wait_time = draw(_huge_numbers())
        at = (job.name, "wait_time")
    elif rule == "unsafe handler":
        job.handler = draw(_unsafe(handlers))
        assume(job.handler.strip() == job.handler)  # an unsafe char at an end is stripped
        at = (job.name, "handler")
    elif rule == "unsafe s3 key":
        uri = draw(_unsafe(s3_uris))
        assume(uri.strip() == uri)  # anywhere else it breaks the scheme, the bucket or the key
        job.source = ("s3_uri", uri)
        at = (job.name, "s3_uri")
    elif rule == 's3 key , " \\':
        bad = draw(st.sampled_from([",", '"', "\\"]))
        job.source = ("s3_uri", draw(s3_uris) + bad + "x")
        at = (job.name, "s3_uri")
    elif rule == "absolute handler":
        job.handler = "/" + job.handler
        at = (job.name, "handler")
    elif rule == "dotdot handler":
        job.handler = "../" + job.handler
        at = (job.name, "handler")
    elif rule == "missing handler":
        job.handler = None
        at = (job.name, None)
    elif rule == "no source":
        job.source = None
        at = (job.name, None)
    elif rule == "both sources":
        job.source = ("both", "s3://my-bucket/x/", "jobs/prepare")
    elif rule == "unknown key":
        job.extra.append((draw(st.sampled_from(["handeler", "s3uri", "wait", "timeout", "Handler2"])),
                          "x"))
        at = (job.name, job.extra[-1][0])
    elif rule == "listed twice":
        config.listed.append(job.name)
        at = ("order", config.kind)
    elif rule == "listed without section":
        config.jobs.remove(job)
        config.order_at = min(config.order_at, len(config.jobs))
        at = ("order", config.kind)
    elif rule in ("bad name", "long name"):
        if rule == "bad name":
            odd = draw(st.sampled_from(list("./:;!é$*\\\"'`") + ["\x1b", "\u202e", "\u00a0"]))
            # not at an end: a value's surrounding whitespace (NBSP too) is stripped, as in INI
            new = job.name[:1] + odd + (job.name[1:] or "z")
        else:
            new = (job.name * 65)[:draw(st.integers(65, 300))]
        config.listed[config.listed.index(job.name)] = new
        job.name = new
        at = (new, None)
    elif rule == "duplicate key":
        job.extra.append(("handler", "again.sh"))
        at = (job.name, "handler-dup")
    elif rule == "both order kinds":
        other = "parallel" if config.kind == "sequential" else "sequential"
        config.order_lines.append((other, ", ".join(config.listed)))
        at = ("order", other)
    elif rule == "trailing comma":
        config.listed.append("")
        at = ("order", config.kind)
    elif rule == "no such local_path":
        job.source = ("local_path", "jobs/does-not-exist", None)
        at = (job.name, "local_path")
    elif rule == "duplicate section":
        config.jobs.append(replace(job, key_order=list(job.key_order), extra=[]))
        at = None
    return config, rule, at


@given(broken_configs())
def test_a_config_breaking_one_rule_is_refused_on_that_line(case):
    config, rule, at = case
    text, where = render(config)
    note(f"rule broken: {rule}\n{text}")
    result = outcome(text)
    assert isinstance(result, ConfigError), f"accepted although {rule}"
    lines = {p.line for p in result.problems}
    if at is not None and at[1] == "handler-dup":
        # the second 'handler' line is the last line of its section
        assert any(p.key == "handler" and p.section == f"job {at[0]}" for p in result.problems)
    elif at is not None:
        line = where.get(at)
        assert line in lines, f"no problem on line {line} ({at}): " + "; ".join(map(str, result.problems))


# Text close to the grammar: its words, odd characters, huge numbers, random order.
tokens = st.one_of(
    st.sampled_from([
        "[order]", "[job a]", "[job b]", "[ job  a ]", "[job]", "[jobs a]", "[order x]", "[",
        "sequential = a, b", "parallel = a", "sequential = a,, b", "sequential = a,", "= x",
        "handler = run.sh", "handler =", "s3_uri = s3://my-bucket/a/", "s3_uri = s3://b",
        "local_path = jobs/prepare", "local_path = single.sh", "local_path = /", "wait_time = 5",
        "  continued", "# comment", "; comment", "", "key: value", "HANDLER = x",
    ]),
    st.builds(lambda n: f"wait_time = {n}", _huge_numbers()),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(["handler", "s3_uri", "local_path"]),
              st.text(max_size=30)),
    st.builds(lambda n: f"[job {n}]", st.text(max_size=70)),
    st.text(max_size=40),
)


@given(st.lists(tokens, max_size=30), st.sampled_from(["\n", "\r\n", "\r"]))
def test_grammar_like_text_never_raises_anything_but_a_config_error(lines, newline):
    text = newline.join(lines)
    note(repr(text))
    outcome(text)


@given(st.text(max_size=400))
def test_any_text_never_raises_anything_but_a_config_error(text):
    outcome(text)
