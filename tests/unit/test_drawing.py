"""`stepcluster graph`: the workflow's picture, drawn by Graphviz's real `dot` (make install
puts it there), and Mermaid text; coloured by a run's final states."""

from __future__ import annotations

import json
import textwrap

import pytest

from stepcluster import cli
from stepcluster.config import parse_jobs_config
from stepcluster.errors import InputError
from stepcluster.tools import drawing

DIAMOND = textwrap.dedent("""\
    [order]
    parallel = a, b, c, d
    [job a]
    handler = prep.sh
    s3_uri = s3://my-bucket/a/
    [job b]
    handler = sim.sh
    s3_uri = s3://my-bucket/b/
    depends_on = a
    tasks = 8
    memory = 4G
    time_limit = 2:00:00
    retries = 2
    retry_on = 137
    [job c]
    handler = sim.sh
    s3_uri = s3://my-bucket/c/
    depends_on = a
    array = 1-8
    [job d]
    handler = report.sh
    s3_uri = s3://my-bucket/d/
    depends_on = b, c
    """)


@pytest.fixture
def diamond(tmp_path):
    return parse_jobs_config(DIAMOND, "jobs.ini", tmp_path)


def test_the_dot_source_has_each_job_what_it_asks_for_and_who_waits_for_whom(diamond):
    source = drawing.dot_source(diamond)
    assert '"b" [label="b\\nsim.sh\\ntasks 8\\nmemory 4G\\ntime 2:00:00\\nretries 2 on 137"];' in source
    assert '"c" [label="c\\nsim.sh\\narray 1-8"];' in source
    edges = sorted(line.strip() for line in source.splitlines() if "->" in line)
    assert edges == ['"a" -> "b";', '"a" -> "c";', '"b" -> "d";', '"c" -> "d";']


def test_a_sequential_run_is_drawn_as_its_chain(tmp_path):
    config = parse_jobs_config("[order]\nsequential = x, y\n[job x]\nhandler = a.sh\ns3_uri = s3://my-bucket/x/\n"
                               "[job y]\nhandler = b.sh\ns3_uri = s3://my-bucket/y/\n", "j.ini", tmp_path)
    assert [l.strip() for l in drawing.dot_source(config).splitlines() if "->" in l] == ['"x" -> "y";']
    assert "  x --> y" in drawing.mermaid_source(config)


def test_dot_draws_it_as_svg_coloured_by_the_runs_states(diamond):
    states = {"a": "SUCCEEDED", "b": "FAILED", "c": "CANCELLED", "d": "NOT_STARTED"}
    svg = drawing.render(diamond, "svg", states).decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for name, state in states.items():
        assert f"<title>{name}</title>" in svg
        assert drawing.STATE_COLOURS[state] in svg
    assert drawing.render(diamond, "png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_mermaid_text_for_readmes(diamond):
    text = drawing.mermaid_source(diamond, {"a": "SUCCEEDED", "b": "FAILED"})
    assert text.startswith("flowchart LR\n") and "  a --> b\n" in text and "  c --> d\n" in text
    assert "  class b failed\n" in text and f"  classDef failed fill:{drawing.STATE_COLOURS['FAILED']}\n" in text


def test_the_command_writes_the_picture_and_says_what_is_wrong(tmp_path, capsys, diamond):
    config = tmp_path / "jobs.ini"
    config.write_text(DIAMOND)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"jobs": {"a": {"state": "SUCCEEDED"}, "b": {"state": "FAILED"}}}))
    assert cli.main(["graph", str(config), "-o", str(tmp_path / "w.svg"), "--execution", str(manifest)]) == 0
    assert drawing.STATE_COLOURS["FAILED"] in (tmp_path / "w.svg").read_text()
    assert cli.main(["graph", str(config), "-o", str(tmp_path / "w.txt")]) == 2
    assert cli.main(["graph", str(config), "-o", str(tmp_path / "w.svg"), "--execution", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "cannot draw a .txt file" in err and "cannot read the manifest" in err
    with pytest.raises(InputError, match="not a run's manifest"):
        drawing.states_from_manifest({"execution": "x"})
