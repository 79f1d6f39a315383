"""The shipped definition, checked as a graph (moto accepts a Next to a missing state, AWS does not)."""

import json

import pytest

from stepcluster import definition

TASK_TRANSIENT = {"Lambda.ServiceException", "Lambda.AWSLambdaException",
                  "Lambda.SdkClientException", "Lambda.TooManyRequestsException"}


@pytest.fixture(scope="module")
def states():
    text = definition.read_definition()
    json.loads(text)  # valid JSON before substitution
    values = {key: "x" for key in definition.placeholders(text)}
    return json.loads(definition.substitute(text, values))["States"]


def targets(state):
    found = [state.get("Next"), state.get("Default")]
    found += [c["Next"] for c in state.get("Choices", [])]
    found += [c["Next"] for c in state.get("Catch", [])]
    return [t for t in found if t]


def test_every_transition_points_at_a_state(states):
    for name, state in states.items():
        for target in targets(state):
            assert target in states, f"{name} -> {target} does not exist"


def test_every_state_is_reachable_and_every_path_ends(states):
    seen, todo = set(), ["Start Run"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += targets(states[name])
    assert seen == set(states)
    for name, state in states.items():
        assert state["Type"] in ("Succeed", "Fail") or targets(state), f"{name} is a dead end"


def test_every_choice_has_a_default(states):
    for name, state in states.items():
        if state["Type"] == "Choice":
            assert "Default" in state, name


def test_every_task_retries_transient_errors_and_catches_everything(states):
    for name, state in states.items():
        if state["Type"] != "Task":
            continue
        retried = set().union(*(set(r["ErrorEquals"]) for r in state["Retry"]))
        assert TASK_TRANSIENT <= retried or "States.ALL" in retried, name
        assert any("States.ALL" in c["ErrorEquals"] for c in state["Catch"]), name
        assert state.get("TimeoutSeconds"), f"{name} has no timeout"


def test_after_the_cluster_exists_every_failure_reaches_delete(states):
    """From every task after Create Cluster, each Catch leads to Delete Cluster."""
    def reaches_delete(name, seen=()):
        if name == "Delete Cluster":
            return True
        if name in seen or states[name]["Type"] in ("Fail", "Succeed"):
            return False
        return any(reaches_delete(t, seen + (name,)) for t in targets(states[name]))

    for name, state in states.items():
        if state["Type"] == "Task" and name not in ("Delete Cluster", "Check Deletion"):
            for catch in state["Catch"]:
                if "States.ALL" in catch["ErrorEquals"]:
                    assert reaches_delete(catch["Next"]), f"{name}: catch-all skips the teardown"


def test_definition_size_does_not_depend_on_the_jobs():
    """The jobs reach the functions as a bundled plan; the definition only carries its digest."""
    text = definition.read_definition()
    assert definition.placeholders(text) == {
        "ClusterFunctionArn", "PrepareHeadNodeFunctionArn", "SubmitJobsFunctionArn",
        "PollJobsFunctionArn", "CancelJobsFunctionArn", "ReleaseHeadNodeFunctionArn", "JobsPlanDigest"}
    assert len(text.encode()) < 20_000


def test_substitute_refuses_a_missing_value():
    with pytest.raises(KeyError, match="JobsPlanDigest"):
        definition.substitute('{"a": "${JobsPlanDigest}"}', {})


def test_asl_validator_accepts_the_definition():
    """The npm asl-validator checks the ASL the way AWS does (paths, fields, targets)."""
    import subprocess
    from pathlib import Path

    validator = Path(definition.DEFINITION_PATH).parents[1] / "node_modules" / ".bin" / "asl-validator"
    assert validator.exists(), "run `make install` (npm ci) first"
    done = subprocess.run([str(validator), "--json-path", str(definition.DEFINITION_PATH)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
