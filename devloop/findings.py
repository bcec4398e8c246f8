"""Findings parsed from a check's output: ruff's JSON, and the common `path:line[:col]: message`.

Only paths inside the project are kept, relative to its root, so that a stray
`http://host:80: ...` or a traceback line from site-packages is not a finding.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    column: int | None
    severity: str
    code: str | None
    message: str


_LINE = re.compile(
    r"^(?P<path>[^:\n]+?):(?P<line>\d+)(?::(?P<col>\d+))?:\s*(?P<rest>.*)$"
)
_SEVERITY = re.compile(r"^(?P<sev>error|warning|note|info|fatal error|hint)\s*:\s*", re.IGNORECASE)
_TRAILING_CODE = re.compile(r"\s+\[(?P<code>[\w-]+)\]\s*$")
_LEADING_CODE = re.compile(r"^(?P<code>[A-Z]+[0-9]+)\s+")
MAX_FINDINGS = 1000


def relative(root: Path, path: str) -> str | None:
    """`path` relative to the project, or None when it lies outside or does not exist."""
    path = path.strip()
    if not path or "\n" in path:
        return None
    full = os.path.normpath(path if os.path.isabs(path) else os.path.join(root, path))
    rel = os.path.relpath(full, root)
    if rel.startswith(".."):
        return None
    if not os.path.lexists(full):
        return None
    return rel


def findings_from_json(root: Path, data: Any) -> list[Finding] | None:
    """ruff's JSON list as findings (inside the project only), or None if it is not one."""
    if not isinstance(data, list):
        return None
    found: list[Finding] = []
    for item in data:
        if not isinstance(item, dict):
            return None
        loc, filename = item.get("location"), item.get("filename")
        if not isinstance(filename, str) or not isinstance(loc, dict):
            return None
        rel = relative(root, filename)
        row, col = loc.get("row"), loc.get("column")
        if rel is None or not isinstance(row, int):
            continue
        code, message = item.get("code"), item.get("message")
        found.append(Finding(
            file=rel, line=row, column=col if isinstance(col, int) else None,
            severity="error", code=code if isinstance(code, str) else None,
            message="" if message is None else str(message),
        ))
    return found


def json_in_text(text: str) -> Any:
    """The first JSON array in `text` that starts a line; text around it is ignored."""
    decoder = json.JSONDecoder()
    pos = 0
    while (start := text.find("[", pos)) != -1:
        if start == 0 or text[start - 1] == "\n":
            try:
                return decoder.raw_decode(text, start)[0]
            except ValueError:
                pass
        pos = start + 1
    return None


def _from_lines(root: Path, output: str) -> list[Finding]:
    found: list[Finding] = []
    seen: set[Finding] = set()
    for raw in output.splitlines():
        m = _LINE.match(raw.strip())
        if m is None:
            continue
        rel = relative(root, m["path"])
        if rel is None:
            continue
        rest = m["rest"].strip()
        severity = "error"
        sev = _SEVERITY.match(rest)
        if sev:
            severity = sev["sev"].lower().replace("fatal error", "error")
            rest = rest[sev.end():]
        code = None
        tc = _TRAILING_CODE.search(rest)
        if tc:
            code = tc["code"]
            rest = rest[: tc.start()]
        else:
            lc = _LEADING_CODE.match(rest)
            if lc:
                code = lc["code"]
                rest = rest[lc.end():]
        f = Finding(
            file=rel,
            line=int(m["line"]),
            column=int(m["col"]) if m["col"] else None,
            severity=severity,
            code=code,
            message=rest,
        )
        if f not in seen:
            seen.add(f)
            found.append(f)
    return found


def parse(root: Path, output: str) -> list[Finding]:
    """Best effort: a check's output that is neither format simply has no findings."""
    data = json_in_text(output)
    found = findings_from_json(root, data) if data is not None else None
    if found is None:
        found = _from_lines(root, output)
    return found[:MAX_FINDINGS]
