"""Prometheus metrics built from the heartbeat, so every exporter tells the same story.

The heartbeat file is the daemon's only report: `devloop metrics DIR`, the HTTP
endpoint and the node_exporter textfile all turn it into metrics through one custom
collector registered in a fresh CollectorRegistry (never the global one, which would
add this process's own python_* metrics and keep state between projects).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from devloop import __version__
from devloop.core.daemon_health import HEALTHY, check_daemon_health, read_heartbeat

log = logging.getLogger("devloop")


@dataclass(frozen=True)
class Snapshot:
    """One project's heartbeat (None: no daemon) and whether daemon-status calls it HEALTHY."""

    project: str
    record: dict[str, Any] | None
    healthy: bool


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


def families(snapshots: Iterable[Snapshot]) -> Iterator[Metric]:
    """The metric families for these projects; every sample has a `project` label."""
    p = ["project"]
    c = ["project", "check"]
    up = GaugeMetricFamily("devloop_up", "1 when the daemon is running and healthy "
                           "(devloop daemon-status says HEALTHY), else 0", labels=p)
    uptime = GaugeMetricFamily("devloop_uptime_seconds", "Seconds since the daemon started, "
                               "as of its last heartbeat", labels=p)
    beat = GaugeMetricFamily("devloop_last_heartbeat_timestamp_seconds",
                             "Unix time of the daemon's last heartbeat", labels=p)
    watches = GaugeMetricFamily("devloop_watches", "Directories watched with inotify",
                                labels=p)
    rescans = CounterMetricFamily("devloop_rescans", "Full rescans after an inotify queue "
                                  "overflow", labels=p)
    runs = CounterMetricFamily("devloop_check_runs", "Check runs since the daemon started, "
                               "by outcome", labels=[*c, "outcome"])
    duration = GaugeMetricFamily("devloop_check_duration_seconds",
                                 "Duration of the check's last run", labels=c)
    success = GaugeMetricFamily("devloop_check_last_success_timestamp_seconds",
                                "Unix time the check last passed", labels=c)
    failing = GaugeMetricFamily("devloop_check_failing",
                                "1 when the check's last result is a failure", labels=c)
    for snap in snapshots:
        up.add_metric([snap.project], 1.0 if snap.healthy else 0.0)
        rec = snap.record
        if rec is None:
            continue
        for family, value in ((uptime, _num(rec.get("uptime_seconds"))),
                              (beat, _timestamp(rec.get("timestamp"))),
                              (watches, _num(rec.get("watches"))),
                              (rescans, _num(rec.get("rescans")))):
            if value is not None:
                family.add_metric([snap.project], value)
        checks = rec.get("checks")
        for name, stats in (checks.items() if isinstance(checks, dict) else ()):
            if not isinstance(stats, dict):
                continue
            labels = [snap.project, str(name)]
            counts = stats.get("runs")
            for outcome, n in (counts.items() if isinstance(counts, dict) else ()):
                if (value := _num(n)) is not None:
                    runs.add_metric([*labels, str(outcome)], value)
            if (value := _num(stats.get("last_duration_seconds"))) is not None:
                duration.add_metric(labels, value)
            if (value := _num(stats.get("last_success_timestamp"))) is not None:
                success.add_metric(labels, value)
            failing.add_metric(labels, 1.0 if stats.get("failing") is True else 0.0)
    yield InfoMetricFamily("devloop_build", "The devloop version that exports these metrics",
                           value={"version": __version__})
    yield from (up, uptime, beat, watches, rescans, runs, duration, success, failing)


class ProjectsCollector(Collector):
    """Reads each project's heartbeat at every scrape."""

    def __init__(self, projects: Sequence[Path]) -> None:
        self.projects = list(projects)

    def collect(self) -> Iterator[Metric]:
        return families(
            Snapshot(str(p), read_heartbeat(p), check_daemon_health(p)["status"] == HEALTHY)
            for p in self.projects)


class RecordCollector(Collector):
    """The daemon's own record, just written as its heartbeat: it is alive by definition."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def collect(self) -> Iterator[Metric]:
        healthy = not self.record.get("problem")
        return families([Snapshot(str(self.record.get("project")), self.record, healthy)])


def registry_for(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(projects: Sequence[Path]) -> str:
    """The Prometheus text format for these projects (`devloop metrics DIR`)."""
    return generate_latest(registry_for(ProjectsCollector(projects))).decode("utf-8")


_last_error: list[str] = []  # the textfile error last logged: once, not every heartbeat


def write_textfile(path: Path, record: dict[str, Any]) -> None:
    """Atomically replace `path` (node_exporter's textfile collector); errors are logged."""
    try:
        text = generate_latest(registry_for(RecordCollector(record)))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)  # node_exporter runs as another user
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        message = f"cannot write metrics to {path}: {exc.strerror or exc}"
        if _last_error != [message]:
            log.error("%s", message)
        _last_error[:] = [message]
    else:
        if _last_error:
            log.info("metrics written to %s again", path)
        _last_error.clear()
