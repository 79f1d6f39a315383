"""run-local --parameter-overrides: the template's parameters, checked by the template's rules."""

import pytest

from stepcluster import cli
from stepcluster.errors import ConfigError
from stepcluster.local.parameters import settings_from_overrides


def test_parameters_become_the_settings_the_functions_read():
    assert settings_from_overrides(["BlockedJobTimeoutSeconds=20", "ClusterPollSeconds=5",
                                    "RemoteWorkRoot=runs/x", "ClusterCreateTimeoutSeconds=300"]) == {
        "blocked_job_timeout_seconds": "20", "cluster_poll_seconds": "5", "remote_root": "runs/x",
        "create_timeout_seconds": "300"}
    assert settings_from_overrides([]) == {}


@pytest.mark.parametrize("pair, says", [
    ("BlockedJobTimeoutSecond=20", "the template has no parameter 'BlockedJobTimeoutSecond' "
                                   "(did you mean 'BlockedJobTimeoutSeconds'?)"),
    ("ClusterPollSeconds=0", "must be at least 1, got 0"),
    ("ClusterPollSeconds=3601", "must be at most 3600, got 3601"),
    ("ClusterPollSeconds=5s", "must be a whole number, got '5s'"),
    ("RemoteWorkRoot=../x", "must be a relative path of letters, digits, . _ - and /, each part starting "
                            "with a letter, digit or _ (so no \"..\", hidden or option-like parts), got '../x'"),
    ("HeadNodeHost=10.0.0.1", "HeadNodeHost is set by the local cluster in a local run"),
    ("StagingPath=head-node", "StagingPath is set by --staging in a local run"),
    ("VpcSubnetIds=subnet-1", "does not apply to a local run"),
    ("junk", "'junk' is not KEY=VALUE"),
])
def test_a_bad_override_is_refused_naming_it(pair, says):
    with pytest.raises(ConfigError) as err:
        settings_from_overrides(["ClusterPollSeconds=2", pair])
    [problem] = err.value.problems
    assert says in str(problem) and str(problem).startswith("--parameter-overrides:")


def test_run_local_refuses_bad_overrides_before_running(tmp_path, capsys):
    config = tmp_path / "jobs.ini"
    config.write_text("[order]\nsequential = a\n\n[job a]\nhandler = a.sh\ns3_uri = s3://bucket/a.sh\n")
    code = cli.main(["run-local", str(config), "--cluster-name", "c1",
                     "--parameter-overrides", "BlockedJobTimeoutSeconds=0", "Nope=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "BlockedJobTimeoutSeconds: must be at least 1, got 0" in err and "no parameter 'Nope'" in err
