"""Unknown keys in hand-written documents (registry JSON, layer GeoJSON, TOML config).

A misspelt key must not be dropped silently: `"exclusion"` for `"exclusions"` once
imported a subject whose injunction was never enforced. Each unknown key becomes one
problem that names it, where it is, and the nearest known key, so a clerk can fix the
whole document in one pass.
"""

import difflib
import json
from collections.abc import Iterable, Mapping

MAX_KEY_SHOWN = 60   # a hostile document's megabyte-long key stays one short line


def unknown_keys(mapping: Mapping, known: Iterable[str], where: str) -> list[str]:
    """One problem per key of `mapping` not in `known`, e.g.
    `subjects[3] (id S-17): unknown key "exclusion"; did you mean "exclusions"?`."""
    known = list(known)
    problems = []
    for key in mapping:
        if key in known:
            continue
        text = str(key)
        near = nearest(text, known)
        hint = f'; did you mean "{near}"?' if near else f" (known: {', '.join(known)})"
        problems.append(f"{where}: unknown key {quoted(text)}{hint}")
    return problems


def nearest(text: str, known: Iterable[str]) -> str | None:
    """The known key `text` is most likely a misspelling of, if any is close enough."""
    near = difflib.get_close_matches(text, list(known), n=1)
    return near[0] if near else None


def quoted(text: str) -> str:
    """`text` in double quotes on one line, control characters escaped, long ones cut."""
    if len(text) > MAX_KEY_SHOWN:
        text = text[:MAX_KEY_SHOWN] + "..."
    return json.dumps(text, ensure_ascii=False)
