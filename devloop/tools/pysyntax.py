"""The built-in syntax check: `python -m devloop.tools.pysyntax {files}` in devloop.toml.

The command names no machine-specific path: at run time the adapter runs
pysyntax_script.py by its path with the project's interpreter (its venv's
python, else DevLoop's own), isolated (`-I`: no site-packages, no PYTHONPATH),
so the check needs nothing installed in the project and follows its Python
version. Findings are the common `path:line:col: error:` lines.
"""

from __future__ import annotations

import sys
from pathlib import Path

from devloop.tools import Invocation, env, generic
from devloop.tools.pysyntax_script import main

SCRIPT = Path(__file__).with_name("pysyntax_script.py")


class PySyntax(generic.Generic):
    name = "pysyntax"
    modules = ("devloop.tools.pysyntax", "devloop.pysyntax")  # the second: configs before 0.2

    async def prepare(self, inv: Invocation) -> None:
        venv = env.project_venv(inv.root)
        python = venv / "bin" / "python" if venv is not None else None
        exe = str(python) if python is not None and python.exists() else sys.executable
        inv.argv[:] = [exe, "-I", "-B", str(SCRIPT), *inv.files]


ADAPTER = PySyntax()

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
