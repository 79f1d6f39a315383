"""Every AWS call a cluster tool makes, recorded at botocore's boundary.

`Recorder().installed()` hooks every botocore client created while it is active (the cluster
tools make their own clients, so a hook on one client would miss them): each call is kept as
(service, operation, its own parameters) before botocore serializes it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import botocore.session


@dataclass(frozen=True)
class ApiCall:
    service: str      # botocore's service name: "ec2", "s3", "cloudformation"...
    operation: str    # "CreateStack"
    params: dict

    @property
    def name(self) -> str:
        return f"{self.service}:{self.operation}"


class Recorder:
    def __init__(self):
        self.calls: list[ApiCall] = []

    def before_parameter_build(self, params, model, **_):
        # Bodies (uploads) are streams: keep what names the call's resources, not the payload.
        kept = {k: (v if k != "Body" else "<body>") for k, v in params.items()}
        self.calls.append(ApiCall(model.service_model.service_name, model.name,
                                  json.loads(json.dumps(kept, default=str))))

    def before_call(self, model, **_):
        return None

    @contextlib.contextmanager
    def installed(self):
        original = botocore.session.Session.create_client

        def create_client(session, *args, **kwargs):
            client = original(session, *args, **kwargs)
            client.meta.events.register("before-parameter-build", self.before_parameter_build)
            client.meta.events.register("before-call", self.before_call)
            return client

        botocore.session.Session.create_client = create_client
        try:
            yield self
        finally:
            botocore.session.Session.create_client = original

    def take(self) -> list[ApiCall]:
        taken, self.calls = self.calls, []
        return taken


def lifecycle_calls(backend, recorder: Recorder, cluster_name: str) -> dict[str, list[ApiCall]]:
    """One cluster of `backend` through create -> status -> delete -> deletion status, as a run
    of this stack's state machine drives it; the calls each step made."""
    from stepcluster.clusters.base import RunContext, SshKey

    from .template import STACK, execution_arn

    calls = {}
    ctx = RunContext("run-1", execution_arn("run-1"), cluster_name)
    record = backend.create(ctx, SshKey(f"stepcluster.{STACK}.run-1", "arn:secret", owned=True))
    calls["create"] = recorder.take()
    backend.status(record)
    calls["status"] = recorder.take()
    record = backend.delete(record)
    calls["delete"] = recorder.take()
    backend.deletion_status(record)
    calls["deletion_status"] = recorder.take()
    return calls
