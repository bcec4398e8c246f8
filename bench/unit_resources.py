"""The unit's CPU policy under a real nested systemd with controllers on (root only).

    python3 bench/unit_resources.py [--edits N] [--window S]

Boots tests/systemd's NestedSystemd (v1 cpu/cpuacct/blkio/memory/pids controllers),
installs this repo's wheel and units, and gives alice a project with a small CPU-bound
pytest suite and its own `.venv` (pytest from pip). Then:
1. save -> fresh pytest result, the same project run by `devloop@pt.service` (the shipped
   unit) and by `devloop watch --foreground` outside any unit, edits alternating between
   the two; the time from the write to the result in the database.
2. CPU share: one CPU-bound `python3 -c "while True: pass"` per core, started with
   `systemd-run` at normal priority and default weight (once as services in
   system.slice; once in user.slice, where a login session is), the shipped unit in the
   shipped devloop.slice; then once more in user.slice with the unit moved back into
   system.slice by a drop-in, for comparison.
   Their CPU time (CPUUsageNSec) over a window with the checks running back to back is
   compared with an equal window with devloop idle: the share they keep.
Prints the figures and writes bench/RESULTS-unit.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests/systemd"))

from systemd_harness import (  # noqa: E402  (the tests' harness, not devloop's code)
    USER,
    VENV,
    WHEEL_DIR_NS,
    DevloopSystem,
    NestedSystemd,
    build_wheel,
    can_boot,
)

TOML = """\
[checks.pytest]
command = [".venv/bin/pytest", "-q", "-p", "no:cacheprovider"]
patterns = ["*.py"]
debounce_ms = 0
"""
RESOURCE_LINES = [ln for ln in (REPO / "units/devloop@.service").read_text().splitlines()
                  if ln.startswith(("CPUWeight=", "IOWeight=", "Nice=", "MemoryMax=",
                                    "CPUQuota="))]
SLICE_LINES = [ln for ln in (REPO / "units/devloop.slice").read_text().splitlines()
               if ln.startswith(("CPUWeight=", "IOWeight="))]
TEST = """\
import pytest

@pytest.mark.parametrize("n", range(6))
def test_work(n: int) -> None:
    assert sum(i * i for i in range(400_000 + n + {edit})) > 0
"""


def latest_started(db: Path) -> float:
    """The start of the last passing pytest run. The database lies in the namespace's
    /home (read through /proc/PID/root), which SQLite would resolve to the host's: read a
    copy of it (and of its WAL) instead."""
    copy = Path(f"/tmp/devloop-bench-unit-{os.getpid()}-{db.parent.parent.name}.db")
    try:
        shutil.copyfile(db, copy)
        wal = Path(f"{db}-wal")
        if wal.exists():
            shutil.copyfile(wal, f"{copy}-wal")
        conn = sqlite3.connect(copy, timeout=1)
        try:
            row = conn.execute("SELECT MAX(started) FROM runs WHERE check_name = 'pytest'"
                               " AND outcome = 'pass'").fetchone()
        finally:
            conn.close()
    except (OSError, sqlite3.Error):
        return 0.0
    finally:
        for p in (copy, Path(f"{copy}-wal"), Path(f"{copy}-shm")):
            p.unlink(missing_ok=True)
    return float(row[0] or 0.0)


def save_to_fresh(path: Path, db: Path, edit: int, timeout: float = 120.0) -> float:
    t = time.time()
    path.write_text(TEST.format(edit=edit))
    while time.time() - t < timeout:
        if latest_started(db) > t:
            return time.time() - t
        time.sleep(0.01)
    raise SystemExit(f"no fresh result in {db}")


def cpu_seconds(sd: NestedSystemd, units: list[str]) -> float:
    """CPU time of the units' processes and of their children they reaped (utime, stime,
    cutime, cstime from /proc/PID/stat; a check that ran and was reaped meanwhile counts
    in its parent's). No cgroup namespace: the cgroup paths are the host's."""
    ticks = 0
    for u in units:
        cg = sd.show(u, "ControlGroup")["ControlGroup"]
        try:
            procs = Path(f"/sys/fs/cgroup/systemd{cg}/cgroup.procs").read_text().split()
        except OSError:
            continue
        for pid in procs:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def rates(sd: NestedSystemd, hogs: list[str], unit: str, seconds: float
          ) -> tuple[float, float]:
    """CPU seconds per second of the hogs and of the devloop unit, over `seconds`."""
    h0, d0, t = cpu_seconds(sd, hogs), cpu_seconds(sd, [unit]), time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - t
    return ((cpu_seconds(sd, hogs) - h0) / took, (cpu_seconds(sd, [unit]) - d0) / took)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edits", type=int, default=8)
    ap.add_argument("--window", type=float, default=15.0)
    args = ap.parse_args()
    ok, why = can_boot()
    if not ok:
        raise SystemExit(f"cannot boot a nested systemd: {why}")
    build = Path(os.environ.get("TMPDIR", "/var/tmp")) / f"devloop-bench-unit-{os.getpid()}"
    build.mkdir(parents=True)
    wheel = build_wheel(REPO, build)
    sd = NestedSystemd(v1_controllers=True, home_tmpfs=True, private_tmp=True,
                       binds=[(str(wheel.parent), WHEEL_DIR_NS)])
    sd.start()
    lines: list[str] = []
    outside: subprocess.Popen[bytes] | None = None
    try:
        system = DevloopSystem(sd, wheel, REPO)
        system.setup()
        ns = Path(f"/proc/{sd.pid}/root")
        for name in ("pt", "pt-outside"):
            d = system.make_project(name, TOML, {"tests/test_work.py": TEST.format(edit=0)})
            sd.as_user(USER, ["/usr/bin/python3", "-m", "venv", f"{d}/.venv"], timeout=300)
            sd.as_user(USER, [f"{d}/.venv/bin/pip", "install", "-q",
                              "--disable-pip-version-check", "pytest"], timeout=600)
        inside_dir = ns / system.project_dir("pt").lstrip("/")
        out_dir = ns / system.project_dir("pt-outside").lstrip("/")
        sd.systemctl("start", system.unit("pt"))
        got = sd.show(system.unit("pt"), "Slice")["Slice"]
        if got != "devloop.slice":
            raise SystemExit(f"{system.unit('pt')} runs in {got}, not devloop.slice")
        assert sd.pid is not None
        outside = subprocess.Popen(
            ["nsenter", "-t", str(sd.pid), "-m", "-p", "-u", "--", "setpriv",
             f"--reuid={USER}", f"--regid={USER}", "--init-groups", "--reset-env", "--",
             f"{VENV}/bin/devloop", "watch", "--foreground", system.project_dir("pt-outside")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(build / "outside.log", "wb"),  # noqa: SIM115
            start_new_session=True)
        dbs = {"inside": inside_dir / ".devloop/devloop.db",
               "outside": out_dir / ".devloop/devloop.db"}
        tests = {"inside": inside_dir / "tests/test_work.py",
                 "outside": out_dir / "tests/test_work.py"}
        deadline = time.time() + 180
        while min(latest_started(db) for db in dbs.values()) == 0:
            if time.time() > deadline:
                print(sd.journal("-u", system.unit("pt"), "-n", "30"), file=sys.stderr)
                print((build / "outside.log").read_text(), file=sys.stderr)
                raise SystemExit("no first pytest result")
            time.sleep(0.1)
        samples: dict[str, list[float]] = {"inside": [], "outside": []}
        for i in range(2 + args.edits):  # 2 warm-up edits each
            for where in ("inside", "outside"):
                took = save_to_fresh(tests[where], dbs[where], i + 1)
                if i >= 2:
                    samples[where].append(took)
        med = {w: statistics.median(s) for w, s in samples.items()}
        load = os.getloadavg()[0]
        lines += [
            "# The unit's CPU policy, measured under a real nested systemd",
            "",
            f"`python3 bench/unit_resources.py --edits {args.edits} --window {args.window:g}`, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
            f"load average {load:.1f} (other work shared the machine: not idle). Unit: "
            f"{', '.join(f'`{ln}`' for ln in RESOURCE_LINES)} in `devloop.slice` "
            f"({', '.join(f'`{ln}`' for ln in SLICE_LINES)}); cgroup v1 cpu controller on.",
            "",
            "| save -> fresh pytest result | median (s) | samples (s) |",
            "|---|---:|---|",
        ]
        for w in ("inside", "outside"):
            label = ("inside devloop@pt.service" if w == "inside"
                     else "outside any unit (`devloop watch --foreground`)")
            lines.append(f"| {label} | {med[w]:.3f} | "
                         f"{', '.join(f'{x:.2f}' for x in samples[w])} |")
        lines += ["", f"Inside / outside: {med['inside'] / med['outside']:.2f}x "
                  "(target: at most 1.5x).", ""]
        print("\n".join(lines), flush=True)
        outside.terminate()
        outside.wait(30)
        outside = None

        lines += ["| hogs (one per CPU, default weight, nice 0) | hogs CPU/s, devloop idle | "
                  "hogs CPU/s, checks running | devloop CPU/s meanwhile | hogs' part "
                  "while both ran | hogs busy/idle |", "|---|---:|---:|---:|---:|---:|"]
        ncpu = os.cpu_count() or 1
        for slice_, own_slice in (("system.slice", True), ("user.slice", True),
                                  ("user.slice", False)):
            if not own_slice:  # for comparison: the unit among system.slice's services
                sd.write_file(f"/etc/systemd/system/{system.unit('pt')}.d/slice.conf",
                              "[Service]\nSlice=system.slice\n")
                sd.systemctl("daemon-reload")
                sd.systemctl("restart", system.unit("pt"))
                time.sleep(3)
            units = [f"hog{i}-{slice_.split('.')[0]}-{int(own_slice)}.service"
                     for i in range(ncpu)]
            for u in units:
                sd.run(["systemd-run", f"--unit={u}", f"--slice={slice_}",
                        "/usr/bin/python3", "-c",
                        "while True: pass"])
            time.sleep(1)
            idle, _ = rates(sd, units, system.unit("pt"), args.window)
            stop = time.monotonic() + args.window + 1
            busy_runner = subprocess.Popen(
                [sys.executable, "-c",
                 "import sys, time\n"
                 "sys.path.insert(0, sys.argv[1])\n"
                 "from unit_resources import save_to_fresh\n"
                 "from pathlib import Path\n"
                 "i = 100\n"
                 "while time.monotonic() < float(sys.argv[4]):\n"
                 "    i += 1\n"
                 "    save_to_fresh(Path(sys.argv[2]), Path(sys.argv[3]), i)\n",
                 str(BENCH), str(tests["inside"]), str(dbs["inside"]), str(stop)])
            time.sleep(0.5)
            busy, dl = rates(sd, units, system.unit("pt"), args.window)
            busy_runner.wait(300)
            for u in units:
                sd.systemctl("stop", u, check=False)
            where = " (unit in system.slice: drop-in)" if not own_slice else ""
            lines.append(f"| {len(units)} x `systemd-run --slice={slice_}`{where} | {idle:.2f} | "
                         f"{busy:.2f} | {dl:.2f} | {busy / (busy + dl):.0%} | {busy / idle:.0%} |")
        lines += ["", f"Load average after the CPU-share runs: {os.getloadavg()[0]:.1f} "
                  "(the hogs themselves add about one per CPU).",
                  "", "Hogs' part: of the CPU the hogs and the unit used together while the "
                  "unit's checks ran back to back, the hogs' (target: at least 75%). Hogs "
                  "busy/idle: their CPU time then over an equal window with devloop idle, "
                  "which other work on the machine makes noisy.", ""]
    finally:
        if outside is not None:
            outside.kill()
        sd.stop()
        shutil.rmtree(build, ignore_errors=True)
    (BENCH / "RESULTS-unit.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
