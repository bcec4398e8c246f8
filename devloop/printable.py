"""Untrusted text (file names, check output, config values) made safe to show on one line."""

from __future__ import annotations

import re

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_UNPRINTABLE_BUT_TAB = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def escape_controls(text: str, *, keep_tabs: bool = False) -> str:
    """Control characters, line separators and undecodable bytes (surrogates) as escapes.

    A directory named "x\\nssh-ed25519 AAAA..." must stay on its line, not become a line
    of its own in a log; check output must not drive the terminal with escape sequences.
    """
    pattern = _UNPRINTABLE_BUT_TAB if keep_tabs else _UNPRINTABLE
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
