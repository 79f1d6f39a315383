"""A local stand-in for the Lambda Invoke API, serving the project's own handlers.

moto's Step Functions interpreter calls Lambda through an ordinary boto3 client, which honours
AWS_ENDPOINT_URL_LAMBDA; this server answers `POST /2015-03-31/functions/{name}/invocations`
the way Lambda does, including function errors (X-Amz-Function-Error header, errorType and
errorMessage in the body), which is what the definition's Retry and Catch match on.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import time
import traceback
import urllib.parse
from types import SimpleNamespace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

#: Logical id in template.yaml -> handler module in functions/handlers/.
FUNCTIONS = {
    "ClusterFunction": "handlers.cluster",
    "PrepareHeadNodeFunction": "handlers.prepare_head_node",
    "SubmitJobsFunction": "handlers.submit_jobs",
    "PollJobsFunction": "handlers.poll_jobs",
    "CancelJobsFunction": "handlers.cancel_jobs",
    "ReleaseHeadNodeFunction": "handlers.release_head_node",
}


class LocalLambdaEndpoint:
    """Serve FUNCTIONS on 127.0.0.1 (a free port); count invocations per function and time
    each (`durations`: seconds per call, for `make benchmark`)."""

    def __init__(self, functions: dict[str, str] | None = None):
        self.functions = dict(functions or FUNCTIONS)
        from stepcluster.local.parameters import memory_sizes

        self.memory_mb = memory_sizes()
        self.invocations: dict[str, int] = {}
        self.durations: dict[str, list[float]] = {}
        self.in_flight: dict[str, int] = {}   # calls not returned yet, per function
        self.fault = None  # tests: callable(name, event) raising to simulate a Lambda failure
        self.after = None  # tests: callable(name, event, result) -> result, to alter an answer
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._make_handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def calls_in_flight(self) -> set[str]:
        with self._lock:
            return {name for name, count in self.in_flight.items() if count}

    @property
    def total_invocations(self) -> int:
        return sum(self.invocations.values())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def invoke(self, name: str, event):
        with self._lock:
            self.invocations[name] = self.invocations.get(name, 0) + 1
        if self.fault:
            self.fault(name, event)
        module = importlib.import_module(self.functions[name])
        began = time.monotonic()
        with self._lock:
            self.in_flight[name] = self.in_flight.get(name, 0) + 1
        try:
            # Lambda's context, as much of it as the handlers read: the memory size a task's
            # usage is counted at (the template's)
            result = module.handler(event, SimpleNamespace(function_name=name,
                                                           memory_limit_in_mb=self.memory_mb.get(name)))
        finally:
            with self._lock:
                self.durations.setdefault(name, []).append(time.monotonic() - began)
                self.in_flight[name] -= 1
        return self.after(name, event, result) if self.after else result

    def _make_handler(self):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                parts = self.path.split("?")[0].split("/")
                if len(parts) != 5 or parts[2] != "functions" or parts[4] != "invocations":
                    return self._reply(404, {"message": f"no route {self.path}"})
                name = urllib.parse.unquote(parts[3]).split(":")[-1]
                if name not in endpoint.functions:
                    return self._reply(404, {"Type": "User", "message": f"Function not found: {name}"},
                                       {"x-amzn-errortype": "ResourceNotFoundException"})
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    result = endpoint.invoke(name, json.loads(body or b"null"))
                except Exception as exc:  # reported to the state machine as Lambda does
                    log.info("%s raised %s: %s", name, type(exc).__name__, exc)
                    # in Lambda's order: errorMessage first (the definition reads it by that)
                    return self._reply(200, {"errorMessage": str(exc), "errorType": type(exc).__name__,
                                             "stackTrace": traceback.format_tb(exc.__traceback__)},
                                       {"X-Amz-Function-Error": "Unhandled"})
                self._reply(200, result)

            def _reply(self, code, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler
