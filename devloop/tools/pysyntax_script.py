"""The built-in syntax check's script: does each Python file compile?

Standard library only: the pysyntax adapter runs this file by its path with the
project's own interpreter (`python -I`), so a file is judged by the Python the
project uses. Prints `path:line:col: error: SyntaxError: message`, the common
findings form, and writes no bytecode (the project may be read-only).
"""

from __future__ import annotations

import sys


def check(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as exc:
        return f"{path}:1:1: error: cannot read: {exc.strerror}"
    try:
        compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        return f"{path}:{exc.lineno or 1}:{exc.offset or 1}: error: SyntaxError: {exc.msg}"
    except ValueError as exc:  # null bytes
        return f"{path}:1:1: error: {exc}"
    return None


def main(argv: list[str]) -> int:
    problems = [p for p in (check(path) for path in argv) if p is not None]
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
