"""The execution input, as Create Cluster checks it (issue 8, section 2): anything but a JSON
object holding only the known keys is a clear InputError (which the definition turns into a
failed execution at once), never a silently ignored key or a TypeError."""

import pytest

from stepcluster import service as service_module

from functional.test_service import AsTheStateMachineCalls
from stepcluster.config import parse_jobs_config
from stepcluster.errors import InputError
from stepcluster.plan import build_plan
from stepcluster.settings import Settings


@pytest.fixture
def create(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "run.sh").write_text("true\n")
    config = parse_jobs_config("[order]\nsequential = a\n\n[job a]\nhandler = run.sh\nlocal_path = a\n",
                               str(tmp_path / "jobs.ini"), tmp_path)
    plan = build_plan(config, tmp_path / "plan")
    settings = Settings("existing", "slurm", "127.0.0.1", 22, "hpc", "SHA256:x", "secret",
                        remote_root=str(tmp_path / "remote"))
    svc = AsTheStateMachineCalls(service_module.RunService(settings, plan=plan, private_key=lambda _: "key"))
    return lambda user_input: svc.create_cluster(
        {"input": user_input, "execution": "exec-1", "plan_digest": plan.digest})


def test_a_good_input_is_accepted(create):
    run = create({"cluster_name": "c1", "keep_cluster": True})
    assert run["cluster_name"] == "c1" and run["keep_cluster"] is True


@pytest.mark.parametrize("user_input, what", [
    ([], "an array"), (["c1"], "an array"), ("demo", "a string"), (None, "null"), (42, "a number"),
    (1.5, "a number"), (True, "a boolean"),
])
def test_an_input_that_is_not_an_object_says_what_it_must_be(create, user_input, what):
    with pytest.raises(InputError) as info:
        create(user_input)
    message = str(info.value)
    assert message.startswith('execution input must be a JSON object like {"cluster_name": "my-cluster"}')
    assert f"got {what}" in message


@pytest.mark.parametrize("key, suggestion", [
    ("keep_clsuter", "keep_cluster"), ("clustername", "cluster_name"), ("Cluster_Name", "cluster_name"),
    ("colour", None),
])
def test_an_unknown_key_is_refused_with_a_did_you_mean(create, key, suggestion):
    with pytest.raises(InputError) as info:
        create({"cluster_name": "x", key: True})
    message = str(info.value)
    assert f'unknown key "{key}"' in message
    assert "the keys are cluster_name, keep_cluster" in message
    if suggestion:
        assert f"did you mean {suggestion!r}?" in message
    else:
        assert "did you mean" not in message


def test_every_unknown_key_is_named(create):
    with pytest.raises(InputError, match='unknown keys "a", "b"'):
        create({"cluster_name": "x", "b": 1, "a": 2})


def test_a_missing_cluster_name_is_named(create):
    with pytest.raises(InputError, match="cluster_name is missing"):
        create({})


@pytest.mark.parametrize("name", ["demo\n", "demo\r\n", "x" * 60 + "\n"])
def test_a_cluster_name_with_a_trailing_newline_is_refused(create, name):
    # CLUSTER_NAME ends with `$`, which re.match lets match before a final newline.
    with pytest.raises(InputError, match="cluster_name must start with a letter"):
        create({"cluster_name": name})
