"""The RunService the Lambda handlers share, built once per warm container from the environment."""

from __future__ import annotations

import logging
import os

_service = None


def service():
    global _service
    if _service is None:
        from stepcluster.service import RunService
        from stepcluster.settings import Settings

        logging.getLogger("stepcluster").setLevel(os.environ.get("LOG_LEVEL", "INFO"))
        _service = RunService(Settings.from_env())
    return _service


def reset() -> None:
    """Forget the shared service (tests and run-local change the environment between runs)."""
    global _service
    _service = None
