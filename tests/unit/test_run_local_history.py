"""run-local follows an execution by reading moto's history in place: only the new events."""

import json
import time

from moto import mock_aws

from stepcluster.local import runner
from stepcluster.tools.client import HistoryFollower

DEFINITION = {"StartAt": "One", "States": {
    "One": {"Type": "Pass", "Result": {"n": 1}, "Next": "Two"},
    "Two": {"Type": "Wait", "Seconds": 1, "Next": "Three"},
    "Three": {"Type": "Pass", "End": True}}}


def test_the_events_read_in_place_are_the_apis_and_only_the_new_ones(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sfn = runner.boto3_client("stepfunctions")
        machine = sfn.create_state_machine(name="m", definition=json.dumps(DEFINITION),
                                           roleArn=f"arn:aws:iam::{runner.ACCOUNT}:role/r")["stateMachineArn"]
        arn = sfn.start_execution(stateMachineArn=machine, name="e")["executionArn"]
        seen = []
        follower = HistoryFollower(sfn, arn, seen.append, events_after=runner._moto_events_after)
        calls = []
        monkeypatch.setattr(follower, "_new_events", lambda: calls.append(1) or [])
        while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING":
            follower.update()
            time.sleep(0.1)
        follower.update()
        api = sfn.get_execution_history(executionArn=arn)["events"]
        assert calls == []                                   # never the full read
        assert [(e["id"], e["type"]) for e in follower.events] == [(e["id"], e["type"]) for e in api]
        assert [e["timestamp"].timestamp() for e in follower.events] == [e["timestamp"].timestamp() for e in api]
        assert follower.events[2]["stateExitedEventDetails"]["output"] == \
            api[2]["stateExitedEventDetails"]["output"]
        assert runner._moto_events_after(arn, len(api)) == []
        assert [e["id"] for e in runner._moto_events_after(arn, len(api) - 2)] == [e["id"] for e in api[-2:]]
        assert runner._moto_events_after(arn.replace(":e", ":nope"), 0) is None


class PagedHistory:
    """Step Functions' GetExecutionHistory, newest first with reverseOrder, 3 events a page."""

    def __init__(self):
        self.events, self.pages_read = [], 0

    def add(self, kind):
        self.events.append({"id": len(self.events) + 1, "type": kind, "stateEnteredEventDetails": {"name": "S"},
                            "stateExitedEventDetails": {"name": "S"}})

    def get_execution_history(self, executionArn, maxResults, reverseOrder=False, nextToken=None):
        ordered = list(reversed(self.events)) if reverseOrder else list(self.events)
        start = int(nextToken or 0)
        self.pages_read += 1
        page = {"events": ordered[start:start + 3]}
        if start + 3 < len(ordered):
            page["nextToken"] = str(start + 3)
        return page


def test_a_deployed_executions_history_is_read_newest_first_only_until_what_was_seen():
    history = PagedHistory()
    follower = HistoryFollower(history, "arn", lambda line: None)
    for _ in range(10):
        history.add("PassStateEntered")
    follower.update()
    assert [e["id"] for e in follower.events] == list(range(1, 11)) and history.pages_read == 4
    history.pages_read = 0
    history.add("PassStateExited")
    history.add("ExecutionSucceeded")
    follower.update()
    assert [e["id"] for e in follower.events] == list(range(1, 13))
    assert history.pages_read == 1                  # the two new events: one page, not the history
