"""A picture of a workflow: its jobs as nodes (name, handler, what each asks of the scheduler),
an edge from each job to each job that waits for it (a sequential run's chain, `depends_on`),
coloured by each job's final state when a run's manifest is given.

Graphviz draws it (`dot`, a real renderer: SVG, PNG, PDF); Mermaid text (`.mmd`) is for READMEs
and wikis that render it themselves. DOT is written here, so no Python binding is needed.
"""

from __future__ import annotations

import subprocess
from typing import Mapping

from stepcluster import resources
from stepcluster.config import JobsConfig, JobSpec
from stepcluster.errors import InputError

#: The fill of a job in each final state (a manifest's word): what went well, what did not,
#: what never ran.
STATE_COLOURS = {
    "SUCCEEDED": "#b7e1a1", "FAILED": "#f4a3a3", "CANCELLED": "#f7c98b", "NOT_STARTED": "#e0e0e0",
    "PENDING": "#fff2a8", "RUNNING": "#a8d4ff",
}
FORMATS = ("svg", "png", "pdf", "dot", "mmd")


def prerequisites(config: JobsConfig) -> dict[str, tuple[str, ...]]:
    names = [job.name for job in config.jobs]
    if config.order == "sequential":
        return {name: ((names[i - 1],) if i else ()) for i, name in enumerate(names)}
    return {job.name: job.depends_on for job in config.jobs}


def _asks(job: JobSpec) -> list[str]:
    """What the job asks for, in the config's own words."""
    r = job.resources
    parts = []
    for label, value in (("nodes", r.nodes), ("tasks", r.tasks), ("cpus/task", r.cpus_per_task)):
        if value:
            parts.append(f"{label} {value}")
    if r.memory_kib:
        parts.append(f"memory {resources.memory_text(r.memory_kib)}")
    if r.time_limit:
        parts.append(f"time {resources.hms(r.time_limit)}")
    if r.queue:
        parts.append(f"queue {r.queue}")
    if r.array:
        parts.append(f"array {r.array}")
    if job.retries:
        parts.append(f"retries {job.retries}" + (f" on {', '.join(job.retry_on)}" if job.retry_on else ""))
    return parts


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def dot_source(config: JobsConfig, states: Mapping[str, str] | None = None) -> str:
    """The workflow in Graphviz's DOT language, left to right."""
    lines = ["digraph workflow {", '  rankdir=LR; node [shape=box, style="rounded,filled", '
             'fontname="Helvetica", fillcolor="#ffffff"];']
    for job in config.jobs:
        label = "\\n".join(_dot_text(t) for t in [job.name, job.handler, *_asks(job)])
        state = (states or {}).get(job.name)
        fill = f', fillcolor="{STATE_COLOURS.get(state, "#ffffff")}"' if states is not None else ""
        tip = f', tooltip="{_dot_text(state)}"' if state else ""
        lines.append(f'  "{job.name}" [label="{label}"{fill}{tip}];')
    for name, before in prerequisites(config).items():
        for p in before:
            lines.append(f'  "{p}" -> "{name}";')
    if states is not None:
        legend = " | ".join(f"{s.lower().replace('_', ' ')}" for s in STATE_COLOURS if s in set(states.values()))
        lines.append(f'  label="{_dot_text(legend)}"; labelloc=b; fontname="Helvetica";')
    return "\n".join(lines + ["}"]) + "\n"


def mermaid_source(config: JobsConfig, states: Mapping[str, str] | None = None) -> str:
    """The workflow as a Mermaid flowchart (GitHub and many wikis draw it from the text)."""
    lines = ["flowchart LR"]
    for job in config.jobs:
        label = "<br/>".join(t.replace('"', "#quot;") for t in [f"<b>{job.name}</b>", job.handler, *_asks(job)])
        lines.append(f'  {job.name}["{label}"]')
    for name, before in prerequisites(config).items():
        for p in before:
            lines.append(f"  {p} --> {name}")
    for state in sorted(set((states or {}).values())):
        if state in STATE_COLOURS:
            lines.append(f"  classDef {state.lower()} fill:{STATE_COLOURS[state]}")
    for name, state in (states or {}).items():
        if state in STATE_COLOURS:
            lines.append(f"  class {name} {state.lower()}")
    return "\n".join(lines) + "\n"


def render(config: JobsConfig, fmt: str, states: Mapping[str, str] | None = None) -> bytes:
    """The picture in `fmt` (one of FORMATS); InputError when Graphviz is not installed."""
    if fmt not in FORMATS:
        raise InputError(f"cannot draw a .{fmt} file: the formats are {', '.join('.' + f for f in FORMATS)}")
    if fmt == "mmd":
        return mermaid_source(config, states).encode()
    source = dot_source(config, states)
    if fmt == "dot":
        return source.encode()
    try:
        done = subprocess.run(["dot", f"-T{fmt}"], input=source.encode(), capture_output=True, timeout=120)
    except FileNotFoundError:
        raise InputError("Graphviz's `dot` is not installed: `apt-get install graphviz` (make install "
                         "does it), or write .mmd or .dot instead") from None
    if done.returncode != 0:
        raise InputError(f"Graphviz could not draw the workflow: {done.stderr.decode(errors='replace')[:500]}")
    return done.stdout


def states_from_manifest(manifest: dict) -> dict[str, str]:
    """{job: its final state} of a run's manifest."""
    jobs = manifest.get("jobs") if isinstance(manifest, dict) else None
    if not isinstance(jobs, dict):
        raise InputError("not a run's manifest (it has no jobs)")
    return {name: str(entry.get("state")) for name, entry in jobs.items() if isinstance(entry, dict)}
