"""What a run used, and with a price table what it cost: pure functions over the run record.

Measured where it happens: each task adds its own Lambda call (its duration rounded up to the
millisecond, as Lambda bills it, times the function's memory: GB-seconds) and the SSH
connections it opened (`RunService.task`); the cluster's lifetime runs from the request for it
to its deletion (or release); each job's elapsed time comes from its wrapper's start and end,
and its core-hours are that times the cores it asked for (tasks x cpus_per_task, 1 by default:
what the run reserved, whether or not the scheduler's own accounting is set up). State
transitions are counted from the execution's history (`tools/client.history_counts`): no state
can count those that come after it.

Prices are never guessed: with a price table (template parameter PriceTable, a JSON object; the
figures come from AWS's pricing pages for the region: Lambda per GB-second and per request,
Step Functions Standard per state transition, EC2 per instance-hour) the estimate says what it
priced and what it could not; without one, `estimate` says there is none.
"""

from __future__ import annotations

import json
import math
from typing import Mapping

from stepcluster.decisions import epoch
from stepcluster.errors import InputError

#: The price table's keys (USD): PRICES' words, and "instance_hour": {TYPE: USD}.
PRICES = {"lambda_gb_second": "Lambda compute, per GB-second",
          "lambda_request": "Lambda, per request",
          "state_transition": "Step Functions Standard, per state transition"}


def add_task(usage: Mapping | None, *, seconds: float, memory_mb: int | None, ssh_connections: int) -> dict:
    """The run's usage after one more task: one Lambda call of `seconds` at `memory_mb` (None:
    not known here, run-local without a template size), its SSH connections."""
    out = dict(usage or {})
    out["lambda_invocations"] = out.get("lambda_invocations", 0) + 1
    if memory_mb:
        billed_ms = max(1, math.ceil(seconds * 1000))
        out["lambda_gb_seconds"] = round(out.get("lambda_gb_seconds", 0) + billed_ms / 1000 * memory_mb / 1024, 6)
    if ssh_connections:
        out["ssh_connections"] = out.get("ssh_connections", 0) + ssh_connections
    return out


def job_usage(started: str | None, ended: str | None, cores: int) -> dict:
    """One job's elapsed seconds and core-hours (empty when it did not run)."""
    start, end = epoch(started), epoch(ended)
    if start is None or end is None or end < start:
        return {}
    return {"elapsed_seconds": end - start, "core_hours": round((end - start) * cores / 3600, 4)}


def jobs_total(per_job: Mapping[str, Mapping]) -> dict:
    """The jobs' elapsed seconds and core-hours, summed."""
    return {"jobs_elapsed_seconds": sum(u.get("elapsed_seconds", 0) for u in per_job.values()),
            "jobs_core_hours": round(sum(u.get("core_hours", 0) for u in per_job.values()), 4)}


def cluster_lived(usage: Mapping | None, started_at: int | None, now: int) -> dict:
    """The usage once the cluster is gone (deleted, or an existing head node released)."""
    out = dict(usage or {})
    if started_at is not None:
        out["cluster_seconds"] = max(0, now - started_at)
    return out


def with_instances(usage: Mapping | None, instances, now: int) -> dict:
    """The usage with the hours each instance type ran (`ClusterBackend.instances`: launched
    to ended, or to `now` for those still running when the cluster is deleted)."""
    out = dict(usage or {})
    hours: dict[str, float] = {}
    for instance in instances:
        ran = max(0, (instance.get("ended") or now) - instance["launched"])
        hours[instance["type"]] = hours.get(instance["type"], 0) + ran / 3600
    if hours:
        out["instance_hours"] = {kind: round(h, 4) for kind, h in sorted(hours.items())}
    return out


def parse_prices(text: str | None) -> dict | None:
    """The price table (PriceTable), checked; None when there is none."""
    if not text:
        return None
    try:
        prices = json.loads(text)
    except ValueError as exc:
        raise InputError(f"the price table is not JSON: {exc}") from None
    if not isinstance(prices, dict):
        raise InputError("the price table must be a JSON object of USD prices")
    unknown = sorted(set(prices) - set(PRICES) - {"instance_hour"})
    if unknown:
        raise InputError(f"the price table has unknown keys {', '.join(unknown)}: the keys are "
                         f"{', '.join([*PRICES, 'instance_hour'])}")
    for key in PRICES:
        if key in prices and (isinstance(prices[key], bool) or not isinstance(prices[key], (int, float))
                              or prices[key] < 0):
            raise InputError(f"the price table's {key} must be a price in USD, got {prices[key]!r}")
    hours = prices.get("instance_hour", {})
    if not isinstance(hours, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in hours.values()):
        raise InputError("the price table's instance_hour must be {INSTANCE_TYPE: USD}")
    return prices


def estimate(usage: Mapping, prices: Mapping | None, *, state_transitions: int | None = None) -> dict:
    """The run's cost in USD from `prices`, saying what it priced and what it could not; or,
    without a price table, that it has none."""
    if not prices:
        return {"usd": None, "note": "no price table (template parameter PriceTable): no estimate"}
    parts, unpriced = {}, []
    for what, amount, key in (("lambda compute", usage.get("lambda_gb_seconds"), "lambda_gb_second"),
                              ("lambda requests", usage.get("lambda_invocations"), "lambda_request"),
                              ("state transitions", state_transitions, "state_transition")):
        if amount is None:
            continue
        if key in prices:
            parts[what] = amount * prices[key]
        else:
            unpriced.append(what)
    for kind, hours in (usage.get("instance_hours") or {}).items():
        price = (prices.get("instance_hour") or {}).get(kind)
        if price is None:
            unpriced.append(f"{kind} instances")
        else:
            parts[f"{kind} instances"] = hours * price
    if state_transitions is None:
        unpriced.append("state transitions (counted from the execution's history)")
    out = {"usd": round(sum(parts.values()), 6), "parts": {k: round(v, 6) for k, v in parts.items()}}
    if unpriced:
        out["not_priced"] = unpriced
    return out
