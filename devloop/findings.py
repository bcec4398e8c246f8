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


def _relative(root: Path, path: str) -> str | None:
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


def _from_ruff_json(root: Path, output: str) -> list[Finding] | None:
    text = output.strip()
    if not text.startswith("["):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, list):
        return None
    found: list[Finding] = []
    for item in data:
        if not isinstance(item, dict):
            return None
        loc = item.get("location")
        filename = item.get("filename")
        if not isinstance(filename, str) or not isinstance(loc, dict):
            return None
        rel = _relative(root, filename)
        row, col = loc.get("row"), loc.get("column")
        if rel is None or not isinstance(row, int):
            continue
        code = item.get("code")
        message = item.get("message")
        found.append(
            Finding(
                file=rel,
                line=row,
                column=col if isinstance(col, int) else None,
                severity="error",
                code=code if isinstance(code, str) else None,
                message=str(message) if message is not None else "",
            )
        )
    return found


def _from_lines(root: Path, output: str) -> list[Finding]:
    found: list[Finding] = []
    seen: set[Finding] = set()
    for raw in output.splitlines():
        m = _LINE.match(raw.strip())
        if m is None:
            continue
        rel = _relative(root, m["path"])
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
    found = _from_ruff_json(root, output)
    if found is None:
        found = _from_lines(root, output)
    return found[:MAX_FINDINGS]
