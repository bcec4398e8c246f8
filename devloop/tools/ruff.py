"""ruff: `ruff check` writes its JSON report to a private file, read whole.

The adapter replaces any `--output-format`/`--output-file` in the command with
`--output-format=json --output-file=REPORT_DIR/ruff.json`: stdout and stderr
stay human text (warnings, "ruff failed" causes), and no amount of output or
stray text can cut a finding. Other subcommands (`ruff format --check`) run as
written and are read like any command. ruff's cache goes to RUFF_CACHE_DIR
(devloop/tools/env.py). Exit 2 is ruff failing (bad configuration): an error.
"""

from __future__ import annotations

import json

from devloop import findings
from devloop.findings import Finding
from devloop.tools import Finished, Invocation, Report, generic

REPORT_NAME = "ruff.json"
MAX_REPORT_BYTES = 256 * 1024 * 1024
_OUTPUT_OPTIONS = ("--output-format", "--output-file", "-o")


def _subcommand_index(argv: list[str]) -> int | None:
    """Where `check` is in argv (`ruff check`, `python -m ruff check`), else None."""
    start = 3 if len(argv) > 2 and argv[1] == "-m" else 1
    for i in range(start, len(argv)):
        if not argv[i].startswith("-"):
            return i if argv[i] == "check" else None
    return None


def _without_output_options(args: list[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _OUTPUT_OPTIONS:
            skip = True  # its value is the next argument
        elif not arg.startswith(tuple(f"{o}=" for o in _OUTPUT_OPTIONS)):
            kept.append(arg)
    return kept


class Ruff(generic.Generic):
    name = "ruff"
    executables = ("ruff",)
    modules = ("ruff",)
    wants_report_dir = True

    async def prepare(self, inv: Invocation) -> None:
        at = _subcommand_index(inv.argv)
        if at is None:
            return
        inv.argv[:] = [*inv.argv[:at + 1], "--output-format=json",
                       f"--output-file={inv.report_file(REPORT_NAME)}",
                       *_without_output_options(inv.argv[at + 1:])]

    def parse(self, inv: Invocation, done: Finished) -> Report:
        if done.exit_code == 2:  # "ruff failed": configuration or internal error
            return Report(reason=generic.failure_reason(done), outcome="error")
        path = inv.report_file(REPORT_NAME)
        if not path.exists():
            # not `ruff check`, or the report went elsewhere: JSON on stdout, else text
            data = findings.json_in_text(done.stdout.text) if done.stdout.complete else None
            found = findings.findings_from_json(inv.root, data) if data is not None else None
            if found is None:
                return super().parse(inv, done)
            return self._report(found, done)
        try:
            if path.stat().st_size > MAX_REPORT_BYTES:
                return Report(reason=f"ruff's report is over {MAX_REPORT_BYTES >> 20} MiB: "
                              "not parsed", outcome="error")
            found = findings.findings_from_json(inv.root, json.loads(path.read_bytes()))
        except (OSError, ValueError) as exc:
            found, why = None, str(exc)
        else:
            why = "not a list of findings"
        if found is None:
            return Report(reason=f"ruff's JSON report could not be read: {why}", outcome="error")
        return self._report(found, done)

    @staticmethod
    def _report(found: list[Finding], done: Finished) -> Report:
        reason = None
        if done.exit_code != 0:
            kept = min(len(found), findings.MAX_FINDINGS)
            reason = f"{len(found)} findings" + (f", the first {kept} listed"
                                                 if kept < len(found) else "")
            if not found:
                reason = generic.failure_reason(done)
        return Report(findings=found[:findings.MAX_FINDINGS], reason=reason)


ADAPTER = Ruff()
