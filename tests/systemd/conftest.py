"""Fixtures for the real-systemd tests: one nested systemd + venv per test session."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from systemd_harness import (
    FIGURES,
    WHEEL_DIR_NS,
    DevloopSystem,
    NestedSystemd,
    build_wheel,
    can_boot,
    repo_root,
)


@pytest.fixture(scope="session")
def devloop_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevloopSystem]:
    """A real systemd (journald, v1 memory/cpu/pids controllers, private /home and /tmp)
    with the repo's wheel installed in /opt/devloop, user alice and the system template."""
    ok, why = can_boot()
    if not ok:
        pytest.skip(why)
    root = repo_root(pathlib.Path(__file__))
    build = tmp_path_factory.mktemp("devloop-wheel")
    wheel = build_wheel(root, build)
    sd = NestedSystemd(v1_controllers=True, home_tmpfs=True, private_tmp=True,
                       binds=[(str(wheel.parent), WHEEL_DIR_NS)])
    sd.start()
    try:
        system = DevloopSystem(sd, wheel, root)
        system.setup()
        yield system
    finally:
        sd.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("devloop systemd figures")
        for key, value in FIGURES.items():
            terminalreporter.write_line(f"{key:55s} {value}")
