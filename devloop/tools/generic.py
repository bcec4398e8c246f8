"""Any command DevLoop knows nothing about: `path:line[:col]: message` lines from either stream.

stdout and stderr are parsed apart, so a warning on stderr never spoils JSON on
stdout. When a stream was too large to keep whole, its middle was dropped
before parsing: the reason says so, since findings there are not listed.
"""

from __future__ import annotations

import re

from devloop import findings
from devloop.tools import Adapter, Finished, Invocation, Report, first_lines

_ERROR_LINE = re.compile(r"\berror\b\s*:", re.IGNORECASE)


def cut_notice(done: Finished) -> str | None:
    """One line when a stream's middle was dropped, else None."""
    cut = [f"{name} ({s.size} bytes)" for name, s in (("stdout", done.stdout),
                                                      ("stderr", done.stderr))
           if not s.complete]
    if not cut:
        return None
    return f"output too large to keep whole: the middle of {' and '.join(cut)} was not parsed"


def failure_reason(done: Finished) -> str | None:
    """The first `error:` line of either stream, else the first lines of stderr."""
    for stream in (done.stdout, done.stderr):
        for line in stream.text.splitlines():
            if _ERROR_LINE.search(line):
                return line.strip()[:200]
    return first_lines(done.stderr.text) or first_lines(done.stdout.text) or None


class Generic(Adapter):
    name = "generic"

    def parse(self, inv: Invocation, done: Finished) -> Report:
        found = findings.parse(inv.root, done.stdout.text)
        seen = set(found)
        found += [f for f in findings.parse(inv.root, done.stderr.text) if f not in seen]
        reasons = [cut_notice(done)]
        if done.exit_code != 0 and not found:
            reasons.append(failure_reason(done))
        return Report(findings=found[:findings.MAX_FINDINGS],
                      reason="\n".join(r for r in reasons if r) or None)


ADAPTER = Generic()
