"""The state machine definition file and its `${Key}` substitutions (as SAM performs them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

#: statemachine/definition.asl.json in a checkout (the package lives in functions/stepcluster).
DEFINITION_PATH = Path(__file__).resolve().parents[2] / "statemachine" / "definition.asl.json"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def read_definition(path: Path | str | None = None) -> str:
    return Path(path or DEFINITION_PATH).read_text()


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def substitute(text: str, values: dict[str, str]) -> str:
    """Replace every `${Key}`; a key without a value is an error, as in CloudFormation."""
    missing = placeholders(text) - set(values)
    if missing:
        raise KeyError(f"no substitution for {', '.join(sorted(missing))}")
    result = PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
    json.loads(result)  # still JSON: placeholders sit inside strings
    return result
