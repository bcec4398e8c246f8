"""Findings from ruff's JSON and from `path:line[:col]: message` lines."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from devloop.findings import Finding, parse


def test_common_form_mypy_pytest_compilers(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("")
    (tmp_path / "c.c").write_text("")
    out = "\n".join([
        "pkg/m.py:3:5: error: Incompatible types  [assignment]",
        f"{tmp_path}/pkg/m.py:7: note: see here",
        "c.c:10:2: warning: unused variable 'x'",
        "pkg/m.py:12: AssertionError",
        "http://example.org:80: not a finding",
        "/usr/lib/python3.11/os.py:1: outside the project",
        "missing.py:1: no such file",
        "Found 1 error in 1 file",
    ])
    assert parse(tmp_path, out) == [
        Finding("pkg/m.py", 3, 5, "error", "assignment", "Incompatible types"),
        Finding("pkg/m.py", 7, None, "note", None, "see here"),
        Finding("c.c", 10, 2, "warning", None, "unused variable 'x'"),
        Finding("pkg/m.py", 12, None, "error", None, "AssertionError"),
    ]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_real_ruff_json(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("import os\n")
    out = subprocess.run(["ruff", "check", "--output-format=json", "--no-cache", "a.py"],
                         cwd=tmp_path, capture_output=True, text=True).stdout
    assert json.loads(out)
    assert parse(tmp_path, out) == [Finding("a.py", 1, 8, "error", "F401",
                                            "`os` imported but unused")]


def test_garbage_has_no_findings(tmp_path: Path) -> None:
    assert parse(tmp_path, "[1, 2, {]") == []
    assert parse(tmp_path, '[{"filename": 3}]') == []
    assert parse(tmp_path, "\x00\xff" * 1000) == []
