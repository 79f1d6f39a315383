"""Tests of the line-numbered INI reader on its own (functions/stepcluster/inifile.py).

The reader knows INI's syntax and nothing of the jobs grammar: these tests use made-up
sections and keys. Problems come back through the `report` callback as
(line, section, key, message), in the order found.
"""

from __future__ import annotations

import pytest

from stepcluster import inifile
from stepcluster.inifile import Entry, Section, Wording, read, short


def read_all(text, on_header=None, wording=None):
    """(sections, problems) of `text`."""
    problems = []
    kwargs = {} if wording is None else {"wording": wording}
    sections = read(text, lambda *problem: problems.append(problem), on_header, **kwargs)
    return sections, problems


def entries_of(section: Section):
    return {norm: (e.key, e.line, e.value) for norm, e in section.entries.items()}


# ---------------------------------------------------------------------------------------------
# What comes out of a good file


def test_sections_and_entries_with_their_lines():
    sections, problems = read_all(
        "[first]\nalpha = 1\nBeta=two words \n\n[ second  one ]\n  gamma =  3 = 4\n"
    )
    assert problems == []
    first, second = sections
    assert (first.raw, first.line) == ("first", 1)
    assert entries_of(first) == {"alpha": ("alpha", 2, "1"), "beta": ("Beta", 3, "two words")}
    # The text between the brackets is stripped; inner whitespace is left to the caller.
    assert (second.raw, second.line) == ("second  one", 5)
    # Split at the first '=': the rest belongs to the value.
    assert entries_of(second) == {"gamma": ("gamma", 6, "3 = 4")}
    assert second.entries["gamma"].indent == 2
    assert second.entries["gamma"].parts == ["3 = 4"] and second.entries["gamma"].extra_lines == []


def test_an_empty_value_is_an_entry():
    (section,), problems = read_all("[s]\nkey =\nother =   \n")
    assert problems == []
    assert entries_of(section) == {"key": ("key", 2, ""), "other": ("other", 3, "")}


def test_a_leading_bom_is_dropped_and_every_newline_counts():
    for newline in ("\n", "\r\n", "\r"):
        text = "\ufeff" + newline.join(["# c", "[s]", "", "k = v", "[t]", "x = y"])
        (s, t), problems = read_all(text)
        assert problems == []
        assert (s.raw, s.line, t.raw, t.line) == ("s", 2, "t", 5)
        assert s.entries["k"].line == 4 and s.entries["k"].value == "v"
        assert t.entries["x"].line == 6


def test_only_a_leading_bom_is_dropped():
    (section,), problems = read_all("[s]\nk = \ufeffv\n")
    assert problems == [] and section.entries["k"].value == "\ufeffv"
    # A second one is text: the line does not start with '['.
    sections, problems = read_all("\ufeff\ufeff[s]\n")
    assert sections == []
    assert problems == [(1, None, None, "no [section] headers found: not an INI file "
                         "(expected [NAME] sections)")]


def test_comments_are_whole_lines_only():
    (section,), problems = read_all(
        "# top\n; top\n[s]\n  # indented comment\n\t; another\n"
        "k = a # not a comment\nm = b ; nor this\n"
    )
    assert problems == []
    assert section.entries["k"].value == "a # not a comment"
    assert section.entries["m"].value == "b ; nor this"
    assert section.entries["k"].line == 6


def test_only_hash_and_semicolon_start_a_comment():
    (section,), problems = read_all("[s]\nXk = 1\n/k = 2\n")
    assert problems == [] and list(section.entries) == ["xk", "/k"]


def test_one_meaningful_line_is_enough_not_to_be_empty():
    _, problems = read_all("# c\nk\n")
    assert [p[3] for p in problems] == [
        "no [section] headers found: not an INI file (expected [NAME] sections)"
    ]


def test_percent_is_an_ordinary_character():
    (section,), _ = read_all("[s]\nk = 100%done %(x)s\n")
    assert section.entries["k"].value == "100%done %(x)s"


def test_whitespace_only_lines_are_blank():
    (section,), problems = read_all("[s]\n \t \nk = v\n")
    assert problems == [] and section.entries["k"].line == 3


# ---------------------------------------------------------------------------------------------
# Continuation lines


def test_deeper_lines_continue_the_value_above():
    (section,), problems = read_all(
        "[s]\nlist = a,\n    b,\n  # skipped comment\n        c\nnext = 1\n"
    )
    assert problems == []
    entry = section.entries["list"]
    assert entry.parts == ["a,", "b,", "c"]
    assert entry.extra_lines == [3, 5]
    assert entry.value == "a, b, c"
    assert section.entries["next"].extra_lines == []


def test_continuation_is_relative_to_the_key_line():
    (section,), problems = read_all("[s]\n  a = 1\n  b = 2\n   c\n")
    assert problems == []
    assert section.entries["a"].extra_lines == []  # same indent: a new key, not a continuation
    assert section.entries["b"].parts == ["2", "c"] and section.entries["b"].indent == 2


def test_empty_parts_are_left_out_of_the_value():
    (section,), _ = read_all("[s]\nk =\n   first\n   second\n")
    entry = section.entries["k"]
    assert entry.parts == ["", "first", "second"] and entry.value == "first second"


def test_a_blank_line_ends_a_value():
    (section,), problems = read_all("[s]\nk = 1\n\n   2 = x\n")
    assert section.entries["k"].parts == ["1"]
    # After the blank line the indented line is an entry of its own.
    assert section.entries["2"].line == 4 and problems == []


def test_a_header_ends_a_value():
    (s, t), problems = read_all("[s]\nk = 1\n[t]\n   x = 2\n")
    assert s.entries["k"].parts == ["1"]
    assert t.entries["x"].line == 4 and problems == []


def test_a_line_after_an_error_is_no_continuation():
    (section,), problems = read_all("[s]\nbroken\n   k = v\n")
    assert [p[0] for p in problems] == [2]
    assert section.entries["k"].line == 3


# ---------------------------------------------------------------------------------------------
# Problems


def test_key_colon_value_says_to_use_equals():
    _, problems = read_all("[s]\nkey: value\n")
    assert problems == [
        (2, "s", None, "expected 'key = value', got 'key: value' (use '=' rather than ':')")
    ]


def test_a_line_without_equals():
    _, problems = read_all("[s]\nverbose\n")
    assert problems == [(2, "s", None, "expected 'key = value', got 'verbose'")]


def test_a_value_without_a_key():
    (section,), problems = read_all("[s]\n  = 5\n")
    assert problems == [(2, "s", None, "a value without a key: '= 5'")]
    assert section.entries == {}
    # ...and the deeper line after it is no continuation of anything: an error of its own.
    _, problems = read_all("[s]\n= 5\n   more\n")
    assert [p[0] for p in problems] == [2, 3]


def test_duplicate_keys_ignore_case_and_keep_the_first():
    (section,), problems = read_all("[s]\nKey = 1\nother = x\nkEY = 2\n")
    assert problems == [(4, "s", "kEY", "duplicate key: already set on line 2")]
    assert section.entries["key"].key == "Key" and section.entries["key"].value == "1"


def test_the_same_key_in_two_sections_is_fine():
    (s, t), problems = read_all("[s]\nk = 1\n[t]\nk = 2\n")
    assert problems == [] and t.entries["k"].value == "2"


def test_a_malformed_header():
    sections, problems = read_all("[s]\n[broken  # comment\nk = 1\n")
    assert problems == [
        (2, None, None, "malformed section header '[broken  # comment': expected [NAME] "
         "alone on its line (inline comments are not supported)")
    ]
    broken = sections[1]
    assert (broken.raw, broken.line, broken.entries) == ("[broken  # comment", 2, {})


def test_an_empty_header():
    for header in ("[]", "[   ]", " [ \t ] "):
        sections, problems = read_all(f"{header}\nk = 1\nk = 2\n")
        # Its entries are dropped, so the second k is no duplicate either.
        assert problems == [(1, None, None, "empty section header []: expected [NAME]")]
        assert [(s.raw, s.line, s.entries) for s in sections] == [("", 1, {})]


def test_text_before_the_first_header():
    _, problems = read_all("stray\n\nmore = 1\n[s]\nk = v\n")
    assert problems == [
        (1, None, None, "text outside any section (2 lines before the first [section] header)")
    ]
    _, problems = read_all("# fine\nstray = 1\n[s]\n")
    assert problems == [
        (2, None, None, "text outside any section (1 line before the first [section] header)")
    ]


def test_no_header_at_all():
    sections, problems = read_all("# c\nsome = thing\nother\n")
    assert sections == []
    assert problems == [
        (2, None, None, "no [section] headers found: not an INI file (expected [NAME] sections)")
    ]


@pytest.mark.parametrize("text", ["", "\n\n", "  \n# only\n; comments\n", "\ufeff"])
def test_an_empty_file(text):
    sections, problems = read_all(text)
    assert sections == []
    assert problems == [(None, None, None, "the file is empty: expected [NAME] sections")]


def test_the_callers_wording():
    wording = Wording(headers="[a] or [b X]", sections="an [a] and [b X]s", document="X file")
    _, problems = read_all("[oops\n[]\n", wording=wording)
    assert [p[3] for p in problems] == [
        "malformed section header '[oops': expected [a] or [b X] alone on its line "
        "(inline comments are not supported)",
        "empty section header []: expected [a] or [b X]",
    ]
    _, problems = read_all("\n", wording=wording)
    assert problems[0][3] == "the file is empty: expected an [a] and [b X]s"
    _, problems = read_all("k = v\n", wording=wording)
    assert problems[0][3] == (
        "no [section] headers found: not an X file (expected an [a] and [b X]s)"
    )


def test_problems_come_in_the_order_found():
    _, problems = read_all("[s]\nbad\n[t\nk = 1\nk = 2\n[u]\nk = 1\nk = 2\n")
    where = [(p[0], p[1], p[2]) for p in problems]
    assert where == [(2, "s", None), (3, None, None), (8, "u", "k")]


def test_values_are_quoted_short():
    _, problems = read_all("[s]\n" + "x" * 200 + "\n")
    assert problems[0][3] == f"expected 'key = value', got {'x' * 77 + '...'!r}"


def test_short():
    assert short("abc") == "'abc'"
    assert short("x" * 80) == repr("x" * 80)
    assert short("x" * 81) == repr("x" * 77 + "...")
    assert short("abcdef", limit=5) == "'ab...'"


# ---------------------------------------------------------------------------------------------
# The caller's on_header


def test_on_header_sees_each_well_formed_header_as_it_is_read():
    seen = []

    def on_header(section):
        seen.append((section.raw, section.line, dict(section.entries)))
        return True

    sections, _ = read_all("[a]\nk = 1\n[bad\n[]\n[ b  c ]\nk = 2\n", on_header)
    assert seen == [("a", 1, {}), ("b  c", 5, {})]
    assert [s.raw for s in sections] == ["a", "[bad", "", "b  c"]
    assert sections[3].entries["k"].value == "2"


def test_a_refused_section_keeps_its_lines_but_not_its_entries():
    sections, problems = read_all(
        "[keep]\nk = 1\n[drop]\nk = 1\nk = 2\n    continued\n[keep2]\nk = 3\n",
        lambda section: section.raw != "drop",
    )
    assert problems == []  # no duplicate key in a refused section, no stray continuation
    keep, drop, keep2 = sections
    assert drop.entries == {}
    assert keep.entries["k"].value == "1" and keep2.entries["k"].value == "3"


def test_on_header_may_report_before_the_sections_entries():
    problems = []

    def report(*problem):
        problems.append(problem)

    def on_header(section):
        report(section.line, section.raw, None, "header problem")
        return True

    read("[s]\nbad\n", report, on_header)
    assert problems == [(1, "s", None, "header problem"),
                        (2, "s", None, "expected 'key = value', got 'bad'")]


def test_without_on_header_every_section_is_read():
    sections = read("[a]\nk = 1\n", lambda *p: None)
    assert sections[0].entries["k"].value == "1"


def test_entry_value_and_norm():
    entry = Entry("MiXed", 3, 0, [" a ", "", "b"])
    assert entry.norm == "mixed"
    assert entry.value == "a  b"
    assert entry.extra_lines == []
    assert inifile.Entry("k", 1, 0, ["", ""]).value == ""
