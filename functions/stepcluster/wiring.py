"""What a function's tasks are built from: the deployment's settings, and the jobs plan, the
cluster backend and the AWS clients, each made on first use.

Made lazily because each function needs only some of them: the cleanup sweep that finds
nothing never builds the ParallelCluster backend (which imports pcluster.lib), and the cluster
function never imports paramiko. Tests pass their own plan, backend and clients.
"""

from __future__ import annotations

from typing import Callable

from stepcluster import secrets
from stepcluster.clusters import ClusterBackend, get_backend
from stepcluster.executions import Executions
from stepcluster.keys import RunKeys
from stepcluster.plan import Plan, load_plan
from stepcluster.settings import Settings


class Wiring:
    def __init__(self, settings: Settings, *, plan: Plan | None = None,
                 backend: ClusterBackend | None = None,
                 private_key: Callable[[str], str] = secrets.private_key,
                 keys: RunKeys | None = None, s3_client=None,
                 executions: Executions | None = None, cfn_client=None, lambda_client=None):
        self.settings = settings
        self._plan = plan
        self._backend = backend
        self.private_key = private_key
        self.keys = keys or RunKeys(prefix=settings.resource_prefix)
        self._s3 = s3_client
        self.executions = executions or Executions(region=settings.region)
        self._cfn = cfn_client
        self._lambda = lambda_client

    @property
    def plan(self) -> Plan:
        if self._plan is None:
            self._plan = load_plan()
        return self._plan

    @plan.setter
    def plan(self, plan: Plan) -> None:
        self._plan = plan

    @property
    def backend(self) -> ClusterBackend:
        if self._backend is None:
            self._backend = get_backend(self.settings, self.plan)
        return self._backend

    @property
    def s3(self):
        if self._s3 is None:
            import boto3
            from botocore.config import Config

            from stepcluster.results import UPLOAD_WORKERS
            # as many connections as the results have requests in flight
            self._s3 = boto3.client("s3", config=Config(max_pool_connections=UPLOAD_WORKERS))
        return self._s3

    @property
    def release_function(self):
        """The Lambda client the abort cleanup calls the Release Head Node function with: no
        retry (the function is not idempotent in time: a second call would find it half done),
        and a bounded wait (the cluster is deleted next, whatever it says)."""
        if self._lambda is None:
            import boto3
            from botocore.config import Config

            from stepcluster.lifecycle import RELEASE_WAIT_SECONDS
            self._lambda = boto3.client("lambda", region_name=self.settings.region, config=Config(
                read_timeout=RELEASE_WAIT_SECONDS, connect_timeout=10, retries={"total_max_attempts": 1}))
        return self._lambda

    @property
    def cfn(self):
        if self._cfn is None:
            import boto3
            self._cfn = boto3.client("cloudformation", region_name=self.settings.region)
        return self._cfn
