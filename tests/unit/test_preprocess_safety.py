"""`stepcluster preprocess` on bad input (issue 8, section 2): a clear ConfigError naming the
file or parameter, never a traceback, and nothing half-written.

Tests run as root here, where chmod does not make anything unreadable: unreadable files and
folders are simulated by making open / os.scandir raise PermissionError for one path."""

import os
import pathlib
import re
import tomllib
from pathlib import Path

import pytest

from stepcluster import plan as plan_module
from stepcluster import preprocess as pre
from stepcluster.errors import ConfigError
from stepcluster.plan import pack_local_path, recover_plan_folder
from stepcluster.preprocess import preprocess, samconfig_with_overrides, update_parameter_overrides

SAMCONFIG_TEXT = ('version = 0.1\n\n[default.deploy.parameters]\nstack_name = "s"\n'
                  'parameter_overrides = "Scheduler=\\"slurm\\" HeadNodeHostKey=\\"ssh-ed25519 AAAA x\\" '
                  'JobsPlanDigest=\\"old\\""\n\n[default.build.parameters]\ncached = true\n')


def write_jobs(tmp_path, text_of_job="echo a\n", s3_buckets=0):
    """A config with one local_path job, and `s3_buckets` S3 jobs in as many buckets (200 of
    them make JobSourceObjectArns pass 4,096 bytes: the last check preprocess makes)."""
    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "a" / "run.sh").write_text(text_of_job)
    names = ["a"] + [f"s{i}" for i in range(s3_buckets)]
    text = "[order]\nparallel = " + ", ".join(names) + "\n\n[job a]\nhandler = run.sh\nlocal_path = a\n"
    text += "".join(f"\n[job s{i}]\nhandler = run.sh\ns3_uri = s3://bucket-{i:03d}/some/long/prefix/\n"
                    for i in range(s3_buckets))
    (tmp_path / "jobs.ini").write_text(text)
    return tmp_path / "jobs.ini"


def state(tmp_path):
    """Every file of the plan folder and samconfig.toml, byte for byte, and what lies beside."""
    plan = tmp_path / "plan"
    files = {str(p.relative_to(plan)): p.read_bytes() for p in sorted(plan.rglob("*")) if p.is_file()}
    return files, (tmp_path / "samconfig.toml").read_bytes(), sorted(p.name for p in tmp_path.iterdir())


@pytest.fixture
def deployed(tmp_path):
    """A first, successful preprocess: the state every later failure must leave untouched."""
    (tmp_path / "samconfig.toml").write_text(SAMCONFIG_TEXT)
    first = preprocess(write_jobs(tmp_path), plan_dir=tmp_path / "plan", samconfig=tmp_path / "samconfig.toml")
    assert (tmp_path / "plan" / first.plan.jobs[0].archive).exists()
    return state(tmp_path)


def digests(tmp_path):
    import json
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())["digest"]
    overrides = pre.read_parameter_overrides(tmp_path / "samconfig.toml")[0]
    return plan, overrides["JobsPlanDigest"]


def test_a_config_failing_the_last_check_leaves_plan_and_samconfig_byte_identical(tmp_path, deployed):
    # a changed local job (a new payload would be written) and too many S3 prefixes
    config = write_jobs(tmp_path, "echo changed\n", s3_buckets=200)
    with pytest.raises(ConfigError, match="4096"):
        preprocess(config, plan_dir=tmp_path / "plan", samconfig=tmp_path / "samconfig.toml")
    assert state(tmp_path) == deployed


def test_success_replaces_plan_and_samconfig_together_and_drops_stale_payloads(tmp_path, deployed):
    result = preprocess(write_jobs(tmp_path, "echo changed\n"), plan_dir=tmp_path / "plan",
                        samconfig=tmp_path / "samconfig.toml")
    files, samconfig, beside = state(tmp_path)
    assert digests(tmp_path) == (result.plan.digest, result.plan.digest)
    assert sorted(files) == ["payloads/" + result.plan.jobs[0].archive.split("/")[1], "plan.json"]
    assert set(files) != set(deployed[0])          # the old payload is gone
    assert beside == deployed[2]                    # no temporary file or folder left
    assert result.plan.folder == tmp_path / "plan"
    assert b'Scheduler=\\"slurm\\"' in samconfig   # the user's own entries are kept


def test_a_failure_replacing_samconfig_puts_the_old_plan_back(tmp_path, deployed, monkeypatch):
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "samconfig.toml":
            raise OSError(28, "No space left on device", str(dst))
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ConfigError, match="left as they were"):
        preprocess(write_jobs(tmp_path, "echo changed\n"), plan_dir=tmp_path / "plan",
                   samconfig=tmp_path / "samconfig.toml")
    assert state(tmp_path) == deployed


def test_a_failure_writing_the_new_samconfig_changes_nothing(tmp_path, deployed, monkeypatch):
    def fsync(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(ConfigError, match="nothing was changed"):
        preprocess(write_jobs(tmp_path, "echo changed\n"), plan_dir=tmp_path / "plan",
                   samconfig=tmp_path / "samconfig.toml")
    assert state(tmp_path) == deployed


def test_a_failure_swapping_the_plan_folder_changes_nothing(tmp_path, deployed, monkeypatch):
    real = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".plan.new-"):
            raise OSError(18, "Invalid cross-device link", str(src))
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ConfigError, match="left as it was"):
        preprocess(write_jobs(tmp_path, "echo changed\n"), plan_dir=tmp_path / "plan",
                   samconfig=tmp_path / "samconfig.toml")
    assert state(tmp_path) == deployed


class Crash(BaseException):
    """The process dying: no except clause catches it."""


def test_a_crash_mid_swap_leaves_the_old_plan_whole_and_the_next_run_puts_it_back(tmp_path, deployed, monkeypatch):
    real = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".plan.new-"):
            raise Crash()
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        preprocess(write_jobs(tmp_path, "echo changed\n"), plan_dir=tmp_path / "plan",
                   samconfig=tmp_path / "samconfig.toml")
    monkeypatch.setattr(os, "replace", real)
    assert not (tmp_path / "plan").exists()          # between the two renames ...
    (old,) = tmp_path.glob(".plan.old-*")            # ... the old plan is whole beside it
    assert {str(p.relative_to(old)): p.read_bytes() for p in old.rglob("*") if p.is_file()} == deployed[0]
    recover_plan_folder(tmp_path / "plan")           # what the next preprocess does first
    assert state(tmp_path) == deployed


# --- samconfig.toml: valid TOML, read back by SAM CLI as written, or a refusal -----------------

def sam_reads(samconfig: Path) -> dict[str, str]:
    """parameter_overrides as `sam deploy` reads it: tomlkit (SAM CLI's TOML reader), then SAM
    CLI's own parser."""
    import tomlkit
    from samcli.cli.types import CfnParameterOverridesType

    raw = tomlkit.parse(samconfig.read_text())["default"]["deploy"]["parameters"]["parameter_overrides"]
    return CfnParameterOverridesType().convert(str(raw), None, None)


ODD = ['a"b', '"quoted"', "it's", "a b  c", "x\u2028y", "x\x85y", "x\x0cy", "x\x1b[31my", "\u202eevil",
       "tab\there", "line\nbreak", "cr\rlf", "a\\b", "C:\\dir\\file", "\\\\share", "", "k=v X=y",
       "ParameterKey=A", "ParameterValue=B", "emoji \U0001F600", "del\x7f", "nul\x00"]


@pytest.mark.parametrize("value", ODD)
def test_odd_values_are_written_as_valid_toml_that_sam_reads_back(tmp_path, value):
    samconfig = tmp_path / "samconfig.toml"
    samconfig.write_text(SAMCONFIG_TEXT)
    update_parameter_overrides(samconfig, {"VpcSubnetIds": value})
    data = tomllib.loads(samconfig.read_text())
    assert data["default"]["build"]["parameters"] == {"cached": True}
    assert sam_reads(samconfig) == {"Scheduler": "slurm", "HeadNodeHostKey": "ssh-ed25519 AAAA x",
                                    "JobsPlanDigest": "old", "VpcSubnetIds": value}
    assert pre.read_parameter_overrides(samconfig)[0]["VpcSubnetIds"] == value   # and preprocess too
    text = samconfig.read_text()
    assert len(text.split("\n")) == len(text.splitlines()) + 1    # no stray line breaks
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202e]", text)


@pytest.mark.parametrize("value", ["ends\\", "a\\ b", 'a\\"b', "a\\'b", "a\\\nb", "x\ud800y",
                                   "ParameterKey=A,ParameterValue=B"])
def test_values_sam_cannot_read_back_are_refused_naming_the_parameter(tmp_path, value):
    samconfig = tmp_path / "samconfig.toml"
    samconfig.write_text(SAMCONFIG_TEXT)
    before = samconfig.read_bytes()
    with pytest.raises(ConfigError) as caught:
        update_parameter_overrides(samconfig, {"VpcSubnetIds": value})
    (problem,) = caught.value.problems
    assert problem.key == "VpcSubnetIds" and problem.path == str(samconfig)
    assert samconfig.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["samconfig.toml"]


def test_a_samconfig_written_with_a_quote_is_read_by_the_next_preprocess(tmp_path):
    """The bug: a `"` in a value made a samconfig.toml every later preprocess crashed on."""
    samconfig = tmp_path / "samconfig.toml"
    samconfig.write_text(SAMCONFIG_TEXT)
    update_parameter_overrides(samconfig, {"JobSourceObjectArns": 'arn:aws:s3:::b/a"b*'})
    update_parameter_overrides(samconfig, {"JobsPlanDigest": "new"})
    assert sam_reads(samconfig)["JobSourceObjectArns"] == 'arn:aws:s3:::b/a"b*'


def test_a_multi_line_parameter_overrides_is_refused_not_mangled(tmp_path):
    samconfig = tmp_path / "samconfig.toml"
    samconfig.write_text('version = 0.1\n[default.deploy.parameters]\nparameter_overrides = [\n'
                         '  "A=1",\n  "B=2",\n]\n')
    before = samconfig.read_bytes()
    with pytest.raises(ConfigError, match="one line"):
        update_parameter_overrides(samconfig, {"JobsPlanDigest": "x"})
    assert samconfig.read_bytes() == before


def test_property_any_text_value_is_written_readable_or_refused(tmp_path_factory):
    """Over arbitrary text (every Unicode category, surrogates too): the samconfig written is
    valid TOML whose parameter_overrides SAM CLI's parser reads back exactly, or preprocess
    refuses with a ConfigError, and then SAM CLI could indeed not have read it back.
    Needs hypothesis (not yet in pyproject's dev extras: skipped without it)."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st
    from samcli.cli.types import CfnParameterOverridesType

    alphabet = st.one_of(st.sampled_from(list(' "\'\\=\n\r\t\x0c\x85\u2028\u2029\x00\x7f')),
                         st.characters(blacklist_categories=()))
    base = tmp_path_factory.mktemp("prop")

    # 200 cases (~4 s) in CI; STEPCLUSTER_FUZZ_EXAMPLES=100000 for a long run.
    @hypothesis.settings(max_examples=int(os.environ.get("STEPCLUSTER_FUZZ_EXAMPLES", 200)),
                         deadline=None, database=None)
    @hypothesis.given(st.dictionaries(st.sampled_from(["VpcSubnetIds", "JobSourceObjectArns", "X1"]),
                                      st.text(alphabet, max_size=30), min_size=1, max_size=3))
    def check(values):
        samconfig = base / "samconfig.toml"
        samconfig.write_text(SAMCONFIG_TEXT)
        try:
            text = samconfig_with_overrides(samconfig, values)
        except ConfigError as exc:
            assert exc.problems and all(p.key in values for p in exc.problems)
            for problem in exc.problems:
                value = values[problem.key]
                if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
                    continue          # not text any file could hold
                try:
                    read = CfnParameterOverridesType().convert(f"K={pre.sam_value(value)}", None, None)
                except Exception:
                    continue
                assert read != {"K": value}, value
            return
        raw = tomllib.loads(text)["default"]["deploy"]["parameters"]["parameter_overrides"]
        assert CfnParameterOverridesType().convert(raw, None, None) == \
            {"Scheduler": "slurm", "HeadNodeHostKey": "ssh-ed25519 AAAA x", "JobsPlanDigest": "old", **values}
        samconfig.write_text(text)
        assert sam_reads(samconfig) == pre.read_parameter_overrides(samconfig)[0]

    check()


# --- local_path folders: unreadable entries and huge trees ---------------------------------------

def make_tree(root: Path, dirs: int, files: int, size: int = 1) -> Path:
    (root / "job").mkdir()
    (root / "job" / "run.sh").write_text("true\n")
    for d in range(dirs):
        folder = root / "job" / f"d{d:03d}"
        folder.mkdir()
        for f in range(files):
            (folder / f"f{f:03d}").write_bytes(b"x" * size)
    return root / "job"


def test_an_unreadable_file_in_a_local_path_is_a_problem_naming_it(tmp_path, deployed, monkeypatch):
    secret = (tmp_path / "a" / "secret.dat")
    secret.write_text("s")
    real = pathlib.Path.open

    def fake_open(self, *args, **kwargs):
        if self == secret:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(pathlib.Path, "open", fake_open)
    with pytest.raises(ValueError, match=re.escape(f"{secret} cannot be read (Permission denied)")):
        pack_local_path(tmp_path / "a", "run.sh")
    with pytest.raises(ConfigError) as caught:
        preprocess(tmp_path / "jobs.ini", plan_dir=tmp_path / "plan", samconfig=tmp_path / "samconfig.toml")
    assert str(secret) in str(caught.value.problems[0]) and caught.value.problems[0].key == "local_path"
    assert state(tmp_path) == deployed


def test_an_unreadable_subfolder_is_a_problem_not_a_hole_in_the_package(tmp_path, monkeypatch):
    job = make_tree(tmp_path, dirs=3, files=2)
    hidden = job / "d001"
    real = os.scandir

    def scandir(path="."):
        if Path(os.fsdecode(path)) == hidden:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ValueError, match=re.escape(f"{hidden} cannot be read (Permission denied)")):
        pack_local_path(job, "run.sh")


def count_walk(monkeypatch):
    """Counts the files os.walk lists (what the packer visits)."""
    visited = []
    real = os.walk

    def walk(*args, **kwargs):
        for root, dirs, files in real(*args, **kwargs):
            visited.extend(files)
            yield root, dirs, files
    monkeypatch.setattr(os, "walk", walk)
    return visited


def test_the_file_count_cap_stops_the_walk_at_the_first_excess(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_module, "MAX_PAYLOAD_FILES", 5)
    job = make_tree(tmp_path, dirs=50, files=10)
    visited = count_walk(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(f"{job} holds more than 5 files")):
        pack_local_path(job, "run.sh")
    assert len(visited) <= 11        # the top folder and the first subfolder, of 501 files


def test_the_size_cap_stops_the_walk_at_the_first_excess(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_module, "MAX_PAYLOAD_BYTES", 100)
    job = make_tree(tmp_path, dirs=50, files=1, size=60)
    visited = count_walk(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(f"{job} holds more than")):
        pack_local_path(job, "run.sh")
    assert len(visited) <= 3         # run.sh, then d000/f000 and d001/f000 pass 100 bytes


def test_the_caps_default_to_50_mib_and_100000_files():
    assert plan_module.MAX_PAYLOAD_BYTES == 50 * 2**20 and plan_module.MAX_PAYLOAD_FILES == 100_000


def test_line_and_paragraph_separators_elsewhere_in_samconfig_are_kept(tmp_path):
    """TOML's only newline is \\n: U+2028 or \\x85 in a comment or another string are not line
    breaks, and the rewrite must keep them so (str.splitlines would split there)."""
    samconfig = tmp_path / "samconfig.toml"
    original = ('version = 0.1\n# a comment \u2028 with \x85 separators\n[default.deploy.parameters]\n'
                'stack_name = "s\u2028t"\nparameter_overrides = "A=\\"1\\""\n')
    samconfig.write_text(original)
    update_parameter_overrides(samconfig, {"JobsPlanDigest": "d"})
    data = tomllib.loads(samconfig.read_text())
    assert data["default"]["deploy"]["parameters"]["stack_name"] == "s\u2028t"
    assert "# a comment \u2028 with \x85 separators\n" in samconfig.read_text()
    assert sam_reads(samconfig) == {"A": "1", "JobsPlanDigest": "d"}


def test_a_samconfig_that_is_not_utf8_is_a_problem_naming_it(tmp_path):
    (tmp_path / "samconfig.toml").write_bytes(b'version = 0.1\n# caf\xe9\n')
    with pytest.raises(ConfigError, match="samconfig.toml: cannot be read"):
        preprocess(write_jobs(tmp_path), plan_dir=tmp_path / "plan", samconfig=tmp_path / "samconfig.toml")
    assert not (tmp_path / "plan").exists()
