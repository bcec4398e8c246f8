"""The one gate for values that go into a systemd unit, a drop-in or a supervisord program.

Root writes those files, and some values come from places a project's owner controls
(the project path, devloop.toml's metrics_textfile, the owner's user name). A newline
would start a directive of the attacker's choosing, a `%` a specifier, a quote or a
backslash another word. Every such value goes through one function here: it is either
written so that systemd (or supervisord) reads back exactly the value, or refused with
one line and exit 65, never written.

systemd (5 systemd.syntax, checked against systemd 252): Environment=, ExecStart= and
ReadWritePaths= split their value into words, with "double quotes" and \\ escapes
(Environment= and ExecStart= also C escapes: we only ever write \\\\ and \\", the same in
both), then expand %-specifiers in each word; ExecStart= expands $VAR in its arguments
at run time ($$ is a $). Description= is taken as it is, with specifiers. supervisord
reads its programs with Python's configparser (`;` or `#` after a blank starts a
comment), expands %(name)s in command, directory and user, and splits command with
shlex.
"""

from __future__ import annotations

import re
import shlex
import unicodedata

from devloop.errors import EX_DATAERR, DevloopError

USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_INLINE_COMMENT = re.compile(r"\s[;#]")


def _refuse(what: str, value: str, why: str) -> DevloopError:
    return DevloopError(f"{what} {value!r} {why}: refusing to write it into a service file",
                        EX_DATAERR)


def check(what: str, value: str) -> str:
    """`value` unchanged, or refused when a line-based file cannot hold it."""
    if not value:
        raise _refuse(what, value, "is empty")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            raise _refuse(what, value, "holds a control character or a line break")
    return value


def check_path(what: str, value: str) -> str:
    """An absolute, normalised path (systemd refuses `..` and relative paths)."""
    check(what, value)
    if not value.startswith("/") or any(p in (".", "..") for p in value.split("/")) \
            or "//" in value or (len(value) > 1 and value.endswith("/")):
        raise _refuse(what, value, "is not an absolute, normalised path")
    return value


def user(value: str) -> str:
    """A user name for User= / user=: the portable set only (no specifier, no quoting)."""
    if not USER_RE.match(value):
        raise _refuse("user name", value, "is not a plain user name "
                      "(letters, digits, _ . - only)")
    return value


def systemd_word(what: str, value: str) -> str:
    """One double-quoted word for Environment=, ReadWritePaths= or ExecStart=."""
    check(what, value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def systemd_path(what: str, path: str, prefix: str = "") -> str:
    """A path as one word, e.g. ReadWritePaths=-"/a b" (the prefix goes inside the quotes)."""
    return systemd_word(what, prefix + check_path(what, path))


def systemd_exec(argv: list[str]) -> str:
    """ExecStart='s command: argv[0] an absolute path without quotes or backslashes
    (systemd refuses those: "Executable name contains special characters"); no `$`
    anywhere (argv[0] is not expanded, the arguments are: no escape means the same in
    both)."""
    check_path("executable", argv[0])
    if any(c in argv[0] for c in "'\"\\"):
        raise _refuse("executable", argv[0], "holds a quote or a backslash (systemd "
                      "refuses them in an executable's path)")
    for word in argv:
        if "$" in word:
            raise _refuse("executable", " ".join(argv), "holds a '$'")
    return " ".join(systemd_word("executable", w) for w in argv)


def systemd_text(what: str, value: str) -> str:
    """A free-text value (Description=): specifiers escaped, no trailing backslash (it
    would continue the line)."""
    check(what, value)
    if value.endswith("\\") or value != value.strip():
        raise _refuse(what, value, "ends with a backslash or a blank")
    return value.replace("%", "%%")


def systemd_unquote(value: str) -> str:
    """The inverse of systemd_word, for update-hooks re-reading the drop-ins it wrote."""
    try:
        words = shlex.split(value)
    except ValueError:
        words = []
    if len(words) != 1:
        raise DevloopError(f"cannot read back {value!r}", EX_DATAERR)
    return words[0].replace("%%", "%")


def supervisor_value(what: str, value: str) -> str:
    """A whole supervisord value: %(...)s escaped, no inline comment, no edge blanks."""
    check(what, value)
    if _INLINE_COMMENT.search(value) or value != value.strip():
        raise _refuse(what, value, "has ' ;' or ' #' (a comment to supervisord) or edge "
                      "blanks")
    return value.replace("%", "%%")


def supervisor_command(argv: list[str]) -> str:
    """command=: shlex-quoted words (supervisord splits with shlex after expanding %)."""
    check_path("executable", argv[0])
    return supervisor_value("command", shlex.join(argv))


def supervisor_unquote(value: str) -> str:
    return value.replace("%%", "%")
