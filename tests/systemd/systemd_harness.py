"""A real systemd (with journald and dbus) as PID 1 of a private pid+mount+uts namespace.

Project-owned test harness for the units in ``units/``: nothing here is imported by
devloop at run time. Root is required. The namespace gets throw-away overlays on
/etc, /var and /opt, its own /run, /tmp, /home and /sys/fs/cgroup tmpfs, so nothing it
does (useradd, drop-ins in /etc/systemd/system, /opt/devloop venv, journal) reaches
the host. Commands run inside with ``nsenter``.

Pitfalls handled here (each one seen on Debian 12 / systemd 252 / cgroup v1 hybrid):
  * never let the nested systemd use the host's /sys/fs/cgroup tmpfs (it would remount
    it read-only for the whole machine): a private tmpfs with the same hierarchies;
  * MemoryMax=/TasksMax=/CPUQuota= are enforced only with ``v1_controllers=True``;
  * a ``systemctl`` left running keeps the namespace busy: every command runs in its
    own process group, which is killed on a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

SYSTEMD_BINARY = "/lib/systemd/systemd"

NS_INIT = r"""#!/bin/bash
set -e
UNITDIR="$1"; JCONF="$2"; SCRATCH="$3"
mount -t tmpfs -o mode=755 tmpfs "$SCRATCH"
for d in etc var opt; do
  [ -d "/$d" ] || continue
  mkdir "$SCRATCH/$d.u" "$SCRATCH/$d.w"
  mount -t overlay overlay -o lowerdir=/$d,upperdir="$SCRATCH/$d.u",workdir="$SCRATCH/$d.w" /$d
done
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mkdir -p /var/log/journal
mount -t tmpfs -o mode=2755 tmpfs /var/log/journal
mount --bind "$JCONF" /etc/systemd/journald.conf
mount -t tmpfs -o mode=755 tmpfs /etc/systemd/system
if [ -n "${NESTED_HOME_TMPFS:-}" ] && [ -d /home ]; then
  mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /home
fi
if [ -n "${NESTED_PRIVATE_TMP:-}" ]; then
  mkdir -p /run/nested-units /run/nested-hosttmp
  mount --bind "$UNITDIR" /run/nested-units; UNITDIR=/run/nested-units
  mount --bind /tmp /run/nested-hosttmp
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
fi
IFS=';' read -ra BINDS <<< "${NESTED_BINDS:-}"
for b in "${BINDS[@]}"; do
  [ -z "$b" ] && continue
  src="${b%%=*}"; dst="${b#*=}"
  if [ -n "${NESTED_PRIVATE_TMP:-}" ] && [ "${src#/tmp/}" != "$src" ]; then
    src="/run/nested-hosttmp/${src#/tmp/}"
  fi
  mkdir -p "$dst"; mount --bind "$src" "$dst"; mount -o remount,bind,ro "$dst"
done
if [ -n "${NESTED_PRIVATE_TMP:-}" ]; then
  umount -l /run/nested-hosttmp; rmdir /run/nested-hosttmp
fi
CGM=$(awk -F' - ' '{split($1,l," "); split($2,r," ");
  if ((r[1]=="cgroup"||r[1]=="cgroup2") && l[5] ~ "^/sys/fs/cgroup/") print r[1], l[5], r[3]}' \
  /proc/self/mountinfo)
mount -t tmpfs -o mode=755,nosuid,nodev,noexec tmpfs /sys/fs/cgroup
while read -r fstype mp opts; do
  [ -z "$fstype" ] && continue
  mkdir -p "$mp"
  if [ "$fstype" = cgroup2 ]; then mount -t cgroup2 cgroup2 "$mp"
  else
    o="${opts#rw,}"; [ "$o" = "name=systemd" ] && o="none,name=systemd"
    mount -t cgroup -o "$o" cgroup "$mp"
  fi
done <<< "$CGM"
exec env -i container=nested-test \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  SYSTEMD_UNIT_PATH="/etc/systemd/system:/run/systemd/system:$UNITDIR" \
  /lib/systemd/systemd --system --unit=test.target --log-target=journal --log-level=info \
  --show-status=no
"""

JOURNALD_CONF = """[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitIntervalSec=0
"""

STUB_TARGETS = ("sysinit", "sockets", "timers", "paths", "slices", "local-fs", "network",
                "network-online", "remote-fs", "nss-lookup", "time-sync")
LINKED_UNITS = ("systemd-journald.service", "systemd-journald.socket",
                "systemd-journald-dev-log.socket", "exit.target", "systemd-exit.service",
                "poweroff.target", "systemd-poweroff.service", "halt.target",
                "systemd-halt.service", "final.target", "umount.target", "shutdown.target",
                "dbus.socket", "dbus.service")
V1_CONTROLLERS = ("cpu", "cpuacct", "blkio", "memory", "devices", "pids")


def can_boot() -> tuple[bool, str]:
    """Whether this machine can run NestedSystemd, and why not."""
    if os.geteuid() != 0:
        return False, "needs root (boots a real systemd in a private namespace)"
    if not os.path.exists(SYSTEMD_BINARY):
        return False, f"no {SYSTEMD_BINARY}"
    if not os.path.isdir("/sys/fs/cgroup/systemd") and not os.path.exists(
        "/sys/fs/cgroup/cgroup.controllers"
    ):
        return False, "no cgroup hierarchy for systemd"
    return True, ""


def wait_for(pred: Callable[[], T | None], timeout: float = 30.0, step: float = 0.05,
             what: str = "condition") -> T:
    """Poll ``pred`` until it returns a truthy value; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def make_unit_dir(path: pathlib.Path) -> pathlib.Path:
    """Journald, dbus and stub targets only: nothing of the host's /etc or /lib boot."""
    path.mkdir(parents=True, exist_ok=True)
    for t in STUB_TARGETS:
        (path / f"{t}.target").write_text(
            f"[Unit]\nDescription=stub {t}.target\nDefaultDependencies=no\n")
    (path / "basic.target").write_text(textwrap.dedent("""\
        [Unit]
        Description=stub basic.target
        Requires=sysinit.target
        Wants=sockets.target timers.target paths.target slices.target
        After=sysinit.target sockets.target paths.target slices.target timers.target
        DefaultDependencies=no
        """))
    (path / "multi-user.target").write_text(
        "[Unit]\nDescription=stub multi-user.target\nRequires=basic.target\n"
        "After=basic.target\nAllowIsolate=yes\n")
    (path / "test.target").write_text(
        "[Unit]\nDescription=test default target\n"
        "Wants=systemd-journald.service systemd-journald.socket "
        "systemd-journald-dev-log.socket dbus.socket\n")
    for unit in LINKED_UNITS:
        dst = path / unit
        if not dst.exists():
            dst.symlink_to(f"/lib/systemd/system/{unit}")
    return path


class NestedSystemd:
    """A throw-away real systemd; use as a context manager."""

    def __init__(self, workdir: pathlib.Path | None = None, *, v1_controllers: bool = False,
                 home_tmpfs: bool = False, private_tmp: bool = False,
                 binds: Iterable[tuple[str, str]] = ()) -> None:
        self.v1_controllers = v1_controllers
        self.home_tmpfs = home_tmpfs
        self.private_tmp = private_tmp
        self.binds = list(binds)
        self.work = workdir or pathlib.Path(tempfile.mkdtemp(prefix="devloop-nested-sd-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.unit_dir = make_unit_dir(self.work / "units")
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.cg = ""
        self.hier: list[str] = []

    # -- lifecycle --------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> NestedSystemd:
        init = self.work / "ns-init.sh"
        init.write_text(NS_INIT)
        init.chmod(0o755)
        jconf = self.work / "journald.conf"
        jconf.write_text(JOURNALD_CONF)
        scratch = self.work / "scratch"
        scratch.mkdir(exist_ok=True)
        self.cg = f"devloop-nested-sd-{os.getpid()}-{int(time.time() * 1000)}"
        self.hier = ["systemd", "unified"] + (list(V1_CONTROLLERS) if self.v1_controllers else [])
        for h in self.hier:
            os.makedirs(f"/sys/fs/cgroup/{h}/{self.cg}", exist_ok=True)
        cg = self.cg

        def preexec() -> None:
            os.setsid()
            for h in ("systemd", "unified"):
                with open(f"/sys/fs/cgroup/{h}/{cg}/cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))

        env = {
            **os.environ,
            "NESTED_BINDS": ";".join(f"{s}={d}" for s, d in self.binds),
            "NESTED_HOME_TMPFS": "1" if self.home_tmpfs else "",
            "NESTED_PRIVATE_TMP": "1" if self.private_tmp else "",
        }
        self.log = open(self.work / "ns.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--uts", "--mount-proc",
             "--propagation", "private", "--", str(init), str(self.unit_dir), str(jconf),
             str(scratch)],
            env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=preexec)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nested systemd died: {(self.work / 'ns.log').read_text()}")
            kids = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                  text=True).stdout.split()
            if kids:
                self.pid = int(kids[0])
                state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError("nested systemd did not come up")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.pid is None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.run(["systemctl", "--no-block", "exit"], check=False, timeout=10)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                assert self.pid is not None
                os.kill(self.pid, signal.SIGKILL)  # the kernel then kills the whole pid ns
                self.proc.wait(10)
        self.log.close()
        for h in self.hier:
            root = f"/sys/fs/cgroup/{h}/{self.cg}"
            for d, _, _ in sorted(os.walk(root), key=lambda w: -w[0].count("/")):
                with contextlib.suppress(OSError):
                    os.rmdir(d)
        self.proc = None
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> NestedSystemd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- commands inside the namespace ------------------------------------------------
    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        assert self.pid is not None, "not started"
        cmd = ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "--", *argv]
        stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
        p = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise
        r = subprocess.CompletedProcess(cmd, p.returncode, out, err)
        if check and r.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} -> rc={r.returncode}\nstdout: {out}\nstderr: {err}")
        return r

    def sh(self, script: str, *, check: bool = True, timeout: float = 60.0,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.run(["/bin/sh", "-c", script], check=check, timeout=timeout, input=input)

    def systemctl(self, *args: str, check: bool = True,
                  timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p`` parsed into a dict (systemd prints in its own order)."""
        out = self.systemctl("show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> str:
        return self.run(["journalctl", "--no-pager", *args]).stdout

    def journal_json(self, *args: str) -> list[dict[str, Any]]:
        """Journal records (``-o json``) as dicts."""
        out = self.run(["journalctl", "--no-pager", "-o", "json", *args]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def write_file(self, path: str, text: str, *, owner: str | None = None,
                   mode: str = "0644") -> None:
        """Write ``text`` to ``path`` inside the namespace (as ``owner`` if given)."""
        if owner is None:
            self.run(["install", "-D", "-m", mode, "/dev/stdin", path], input=text)
        else:
            self.as_user(owner, ["/bin/sh", "-c",
                                 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
                                 "sh", path, mode], input=text)

    def as_user(self, user: str, argv: Sequence[str], *, check: bool = True,
                timeout: float = 60.0, input: str | None = None
                ) -> subprocess.CompletedProcess[str]:
        return self.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                         "--reset-env", "--", *argv], check=check, timeout=timeout, input=input)


# -- DevLoop on a nested systemd ----------------------------------------------------------

VENV = "/opt/devloop"          # the system template's ExecStart=/opt/devloop/bin/devloop
WHEEL_DIR_NS = "/run/devloop-wheels"
USER = "alice"
HOME = f"/home/{USER}"
UNIT_DIR_NS = "/etc/systemd/system"

#: figures measured by the tests, printed in pytest's terminal summary
FIGURES: dict[str, str] = {}


def repo_root(start: pathlib.Path | None = None) -> pathlib.Path:
    """The repository under test: the nearest parent with pyproject.toml and units/."""
    here = (start or pathlib.Path(__file__)).resolve()
    for p in [here, *here.parents]:
        if (p / "pyproject.toml").is_file() and (p / "units").is_dir():
            return p
    raise RuntimeError(f"no repository root above {here}")


def build_wheel(root: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """Build the project's wheel from a copy of the repo (the repo itself stays clean)."""
    src = out / "src"
    shutil.copytree(root, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".devloop",
        ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"))
    wheels = out / "wheels"
    subprocess.run(["/usr/bin/python3", "-m", "pip", "wheel", "-q", "--no-deps",
                    "--disable-pip-version-check", "-w", str(wheels), str(src)],
                   check=True, capture_output=True, text=True, timeout=600)
    found = sorted(wheels.glob("devloop_daemon-*.whl"))
    if not found:
        raise RuntimeError(f"no devloop wheel built in {wheels}")
    os.chmod(out, 0o755)
    os.chmod(wheels, 0o755)
    for w in found:
        os.chmod(w, 0o644)
    return found[-1]


def instance_dropin(name: str, user: str = USER) -> str:
    """The per-instance drop-in docs/systemd.md tells admins to write."""
    project = f"{HOME}/dev/{name}"
    return textwrap.dedent(f"""\
        [Service]
        User={user}
        Environment=DEVLOOP_PROJECT_DIR={project}
        ReadWritePaths=-{project}/.devloop
        """)


class DevloopSystem:
    """NestedSystemd with the project's venv at /opt/devloop, user alice and the units."""

    def __init__(self, sd: NestedSystemd, wheel: pathlib.Path, root: pathlib.Path) -> None:
        self.sd = sd
        self.wheel = wheel
        self.root = root

    def setup(self) -> None:
        sd = self.sd
        t = time.monotonic()
        sd.run(["/usr/bin/python3", "-m", "venv", VENV])
        sd.run([f"{VENV}/bin/pip", "install", "-q", "--disable-pip-version-check",
                f"{WHEEL_DIR_NS}/{self.wheel.name}"], timeout=900)
        FIGURES["venv build inside the namespace"] = f"{time.monotonic() - t:.1f}s"
        sd.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", USER])
        sd.as_user(USER, ["mkdir", "-p", f"{HOME}/dev"])
        self.install_units()

    def install_units(self) -> None:
        """Copy the repo's units exactly as they are into /etc/systemd/system."""
        for unit in ("devloop@.service", "devloop.slice"):
            self.sd.write_file(f"{UNIT_DIR_NS}/{unit}",
                               (self.root / "units" / unit).read_text())
        self.sd.systemctl("daemon-reload")

    # -- projects / instances ---------------------------------------------------------
    @staticmethod
    def project_dir(name: str) -> str:
        return f"{HOME}/dev/{name}"

    @staticmethod
    def unit(name: str) -> str:
        return f"devloop@{name}.service"

    def make_project(self, name: str, toml: str | None, files: dict[str, str] | None = None,
                     dropins: dict[str, str] | None = None) -> str:
        """Create ~alice/dev/NAME (owned by alice) and its drop-ins; daemon-reload."""
        d = self.project_dir(name)
        self.sd.as_user(USER, ["mkdir", "-p", d])
        if toml is not None:
            self.sd.write_file(f"{d}/devloop.toml", toml, owner=USER)
        for rel, text in (files or {}).items():
            self.sd.write_file(f"{d}/{rel}", text, owner=USER)
        ddir = f"{UNIT_DIR_NS}/{self.unit(name)}.d"
        self.sd.write_file(f"{ddir}/instance.conf", instance_dropin(name))
        for fname, text in (dropins or {}).items():
            self.sd.write_file(f"{ddir}/{fname}", text)
        self.sd.systemctl("daemon-reload")
        return d

    def remove_project(self, name: str) -> None:
        u = self.unit(name)
        self.sd.systemctl("stop", u, check=False)
        self.sd.systemctl("reset-failed", u, check=False)
        self.sd.run(["rm", "-rf", f"{UNIT_DIR_NS}/{u}.d", self.project_dir(name)])
        self.sd.systemctl("daemon-reload")

    def state(self, name: str) -> dict[str, str]:
        return self.sd.show(self.unit(name), "ActiveState", "SubState", "MainPID", "Result",
                            "NRestarts", "StatusText", "ExecMainStatus", "ExecMainCode")

    def wait_active(self, name: str, not_pid: str | None = None,
                    timeout: float = 60.0) -> dict[str, str]:
        """Wait until the instance is active with a main PID other than ``not_pid``."""
        def ok() -> dict[str, str] | None:
            s = self.state(name)
            good = (s["ActiveState"] == "active" and s["MainPID"] not in ("0", not_pid))
            return s if good else None
        return wait_for(ok, timeout=timeout, what=f"{name} active")

    def heartbeat(self, name: str) -> dict[str, Any] | None:
        r = self.sd.run(["cat", f"{self.project_dir(name)}/.devloop/daemon.heartbeat"],
                        check=False)
        if r.returncode != 0 or not r.stdout.strip():
            return None
        try:
            data: dict[str, Any] = json.loads(r.stdout)
        except json.JSONDecodeError:
            return None
        return data

    def devloop(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the venv's ``devloop`` CLI as alice."""
        return self.sd.as_user(USER, [f"{VENV}/bin/devloop", *args], check=check)

    def cgroup_pids(self, name: str) -> list[int]:
        """PIDs in the instance's cgroup (name=systemd hierarchy)."""
        cg = self.sd.show(self.unit(name), "ControlGroup")["ControlGroup"]
        if not cg:
            return []
        r = self.sd.run(["cat", f"/sys/fs/cgroup/systemd{cg}/cgroup.procs"], check=False)
        return [int(x) for x in r.stdout.split()] if r.returncode == 0 else []
