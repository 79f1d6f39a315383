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


def paths_to_the_end(states, start, *, catches=True):
    """Every path from `start` to a Succeed or Fail state, each loop taken at most once (a path
    that comes back to a state it passed is the same path going round again); without
    `catches`, only the paths no error takes."""
    found, todo = [], [(start,)]
    while todo:
        path = todo.pop()
        state = states[path[-1]]
        if state["Type"] in ("Succeed", "Fail"):
            found.append(path)
            continue
        nexts = targets(state) if catches else [t for t in targets(state)
                                                 if t not in [c["Next"] for c in state.get("Catch", [])]]
        todo += [path + (t,) for t in nexts if t not in path]
    return found


#: Tasks after which the run may have jobs on the scheduler (Submit Jobs may have submitted some
#: before it failed), so a failure must cancel them and release the head node before deleting.
JOBS_MAY_EXIST = ("Submit Jobs", "Poll Jobs")
#: Where every way to "Run Failed" goes first: a function's error JSON becomes its message.
READABLE_CAUSE = "Is The Cause A Function Error?"


def test_every_failed_run_gets_a_readable_cause(states):
    """Lambda hands a Catch the error as JSON with a stack trace; the run's cause is its message."""
    def targets(state):
        yield state.get("Next"), state.get("Default")
        for branch in state.get("Choices", []) + state.get("Catch", []):
            yield (branch["Next"],)

    into = [n for n, s in states.items() if any("Run Failed" in t for t in targets(s))]
    # ...after the release's note (what it could not keep or cancel) is added to the cause; a
    # run whose jobs all succeeded gets a cause of its own, made of that note
    assert into == ["Record What The Release Could Not Do", "Add The Release Note?", "Add The Release Note"]
    assert states["Did Run Fail?"]["Choices"][-1] == {"Variable": "$.run.release_note", "IsPresent": True,
                                                      "Next": "Record What The Release Could Not Do"}
    noted = [n for n, s in states.items() if any("Add The Release Note?" in t for t in targets(s))]
    assert noted == ["Is The Cause A Function Error?", "Keep Its Message"]
    chain = states[READABLE_CAUSE]
    assert chain["Choices"] == [{"Variable": "$.failure.Cause", "StringMatches": '{"errorMessage"*',
                                 "Next": "Read The Function Error"}]
    assert states["Read The Function Error"]["Parameters"] == {"error.$": "States.StringToJson($.failure.Cause)"}
    assert states["Keep Its Message"]["Parameters"] == {"Error.$": "$.failure.Error",
                                                        "Cause.$": "$.function_error.error.errorMessage"}
    assert states["Keep Its Message"]["ResultPath"] == "$.failure"
    # the errors of the teardown are read the same way before a cause quotes them
    for path, label, target in (("release_error", "Release Error", "Was The Run Already Failing?"),
                                ("delete_error", "Deletion Error", "Record Deletion Error")):
        catches = [c for s in states.values() for c in s.get("Catch", []) if c["ResultPath"] == f"$.{path}"]
        assert catches and {c["Next"] for c in catches} == {f"Is The {label} A Function Error?"}
        assert states[f"Is The {label} A Function Error?"]["Default"] == target
        keep = states[f"Keep The {label}'s Message"]
        assert keep["Next"] == target and keep["ResultPath"] == f"$.{path}"
        assert keep["Parameters"]["Cause.$"] == "$.function_error.error.errorMessage"


def test_after_the_cluster_exists_every_failure_path_tears_down(states):
    """Every path out of every catch of every task after Create Cluster reaches Delete Cluster;
    where jobs may exist, it goes through Cancel Jobs and Release Head Node first."""
    tasks = [n for n, s in states.items() if s["Type"] == "Task" and n not in ("Delete Cluster", "Check Deletion")]
    assert set(JOBS_MAY_EXIST) | {"Create Cluster", "Check Cluster Status", "Prepare Head Node"} <= set(tasks)
    for name in tasks:
        for catch in states[name]["Catch"]:
            if name == "Create Cluster" and catch["ErrorEquals"] != ["States.ALL"]:
                # a bad input or a stale deployment: nothing was created
                assert set(catch["ErrorEquals"]) == {"InputError", "PlanError"}
                assert catch["Next"] == READABLE_CAUSE
                continue
            paths = paths_to_the_end(states, catch["Next"])
            assert paths, name
            for path in paths:
                assert "Delete Cluster" in path, f"{name} catch {catch['ErrorEquals']}: {' -> '.join(path)}"
                if name in JOBS_MAY_EXIST:
                    order = [path.index(s) for s in ("Cancel Jobs", "Release Head Node", "Delete Cluster")
                             if s in path]
                    assert len(order) == 3 and order == sorted(order), f"{name}: {' -> '.join(path)}"


def test_every_way_to_succeed_releases_the_head_node_and_deletes_the_cluster(states):
    ends = paths_to_the_end(states, "Start Run")
    # Without errors and without recording a failure (the Choice states' failure branches).
    succeeding = [p for p in paths_to_the_end(states, "Start Run", catches=False)
                  if p[-1] == "Run Succeeded" and not any(n.startswith(("Record ", "Why ")) for n in p)]
    assert succeeding
    for path in succeeding:
        assert "Cancel Jobs" not in path and path.index("Release Head Node") < path.index("Delete Cluster"), path
    for path in ends:   # and a failure after the cluster was asked for never skips the delete
        if path[-1] != "Run Succeeded" and path[1:3] != ("Create Cluster", READABLE_CAUSE):
            assert "Delete Cluster" in path, " -> ".join(path)


def test_definition_size_does_not_depend_on_the_jobs():
    """The jobs reach the functions as a bundled plan; the definition only carries its digest."""
    text = definition.read_definition()
    assert definition.placeholders(text) == {
        "ClusterFunctionArn", "PrepareHeadNodeFunctionArn", "SubmitJobsFunctionArn",
        "PollJobsFunctionArn", "CancelJobsFunctionArn", "ReleaseHeadNodeFunctionArn", "JobsPlanDigest"}
    assert len(text.encode()) < 32_000      # (Step Functions takes up to 1 MiB; this is the same for any plan)


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


def retry_waits(retry) -> list[float]:
    """The waits of a Retry rule before each attempt, at their least (full jitter: nothing)."""
    if retry.get("JitterStrategy") == "FULL":
        return [0.0] * retry["MaxAttempts"]
    waits = [retry["IntervalSeconds"] * retry.get("BackoffRate", 2.0) ** k for k in range(retry["MaxAttempts"])]
    return [min(w, retry.get("MaxDelaySeconds", w)) for w in waits]


@pytest.mark.parametrize("error, task, at_least", [
    ("TransientSSHError", "Poll Jobs", 75),         # sshd restarting, a network blip
    ("SchedulerUnavailable", "Poll Jobs", 300),     # slurmctld / sge_qmaster down (issue 9: 5 min)
    ("SchedulerUnavailable", "Submit Jobs", 300),
    ("SchedulerUnavailable", "Cancel Jobs", 300),
])
def test_outages_are_ridden_out_for_at_least_their_bound_whatever_the_jitter(states, error, task, at_least):
    retry = next(r for r in states[task]["Retry"] if r["ErrorEquals"] == [error])
    assert sum(retry_waits(retry)) >= at_least
