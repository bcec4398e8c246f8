from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_proc import DaemonProc


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    return root


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., DaemonProc]]:
    started: list[DaemonProc] = []

    def start(root: Path, *, ready: bool = True, **kwargs: object) -> DaemonProc:
        d = DaemonProc(root, **kwargs)  # type: ignore[arg-type]
        started.append(d)
        if ready:
            d.wait_ready()
        return d

    yield start
    for d in started:
        d.close()
