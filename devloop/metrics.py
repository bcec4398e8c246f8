"""Prometheus metrics built from the heartbeat, so every exporter tells the same story.

The heartbeat file is the daemon's only report: `devloop metrics DIR`, the HTTP
endpoint and the node_exporter textfile all turn it into metrics through one custom
collector registered in a fresh CollectorRegistry (never the global one, which would
add this process's own python_* metrics and keep state between projects).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
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
from devloop.core import daemon_health
from devloop.core.atomicfile import atomic_write
from devloop.logonce import Trouble

log = logging.getLogger("devloop")


@dataclass(frozen=True)
class Snapshot:
    """One project: its validated heartbeat (None: no daemon, or an unusable file), whether
    daemon-status calls it HEALTHY, and whether the file is there but corrupt/unreadable."""

    project: str
    record: dict[str, Any] | None
    healthy: bool
    corrupt: bool = False


def families(snapshots: Iterable[Snapshot]) -> Iterator[Metric]:
    """The metric families for these projects; every sample has a `project` label.

    Records are validated (daemon_health.validate): no NaN, no negative counter.
    """
    p = ["project"]
    c = ["project", "check"]
    build = InfoMetricFamily("devloop_build", "The devloop version that exports these "
                             "metrics", labels=p)
    up = GaugeMetricFamily("devloop_up", "1 when the daemon is running and healthy "
                           "(devloop daemon-status says HEALTHY), else 0", labels=p)
    corrupt = GaugeMetricFamily("devloop_heartbeat_corrupt", "1 when the heartbeat file "
                                "exists but cannot be read or is corrupt (daemon-status "
                                "ERROR), else 0", labels=p)
    start = GaugeMetricFamily("devloop_start_time_seconds", "Unix time the daemon started",
                              labels=p)
    beat = GaugeMetricFamily("devloop_last_heartbeat_timestamp_seconds",
                             "Unix time of the daemon's last heartbeat", labels=p)
    interval = GaugeMetricFamily("devloop_heartbeat_interval_seconds",
                                 "Seconds between two heartbeats (heartbeat_interval)", labels=p)
    watches = GaugeMetricFamily("devloop_watches", "Directories watched with inotify",
                                labels=p)
    rescans = CounterMetricFamily("devloop_rescans", "Full rescans since the daemon started "
                                  "(inotify queue overflows and ignore-rule reloads)", labels=p)
    overflows = CounterMetricFamily("devloop_overflows", "inotify event queue overflows "
                                    "since the daemon started", labels=p)
    runs = CounterMetricFamily("devloop_check_runs", "Check runs since the daemon started, "
                               "by outcome", labels=[*c, "outcome"])
    duration = GaugeMetricFamily("devloop_check_last_duration_seconds",
                                 "Duration of the check's last run", labels=c)
    success = GaugeMetricFamily("devloop_check_last_success_timestamp_seconds",
                                "Unix time the check last passed", labels=c)
    failing = GaugeMetricFamily("devloop_check_failing",
                                "1 when the check's last result is a failure", labels=c)
    since = GaugeMetricFamily("devloop_check_failing_since_timestamp_seconds",
                              "Unix time the check's current failing streak began (kept "
                              "across daemon restarts); absent while it passes", labels=c)
    for snap in snapshots:
        build.add_metric([snap.project], {"version": __version__})
        up.add_metric([snap.project], 1.0 if snap.healthy else 0.0)
        corrupt.add_metric([snap.project], 1.0 if snap.corrupt else 0.0)
        rec = snap.record
        if rec is None:
            continue
        beat_at = daemon_health.timestamp(rec)
        start.add_metric([snap.project], beat_at - float(rec["uptime_seconds"]))
        beat.add_metric([snap.project], beat_at)
        interval.add_metric([snap.project], daemon_health.interval(rec))
        for family, key in ((watches, "watches"), (rescans, "rescans"),
                            (overflows, "overflows")):
            if key in rec:
                family.add_metric([snap.project], float(rec[key]))
        for name, stats in rec.get("checks", {}).items():
            labels = [snap.project, str(name)]
            for outcome, n in stats.get("runs", {}).items():
                runs.add_metric([*labels, str(outcome)], float(n))
            for family, key in ((duration, "last_duration_seconds"),
                                (success, "last_success_timestamp"),
                                (since, "failing_since")):
                if stats.get(key) is not None:
                    family.add_metric(labels, float(stats[key]))
            failing.add_metric(labels, 1.0 if stats.get("failing") else 0.0)
    yield from (build, up, corrupt, start, beat, interval, watches, rescans, overflows, runs,
                duration, success, failing, since)


def snapshot(project: Path) -> Snapshot:
    """One read of the project's heartbeat; a missing project directory is just down."""
    health, record = daemon_health.assess(project)
    return Snapshot(str(project), record, health["status"] == daemon_health.HEALTHY,
                    corrupt=health["reason"] in ("corrupt", "unreadable", "failed"))


class ProjectsCollector(Collector):
    """Reads each project's heartbeat at every scrape; one bad project spoils no other."""

    def __init__(self, projects: Sequence[Path]) -> None:
        self.projects = list(projects)

    def collect(self) -> Iterator[Metric]:
        return families(snapshot(p) for p in self.projects)


class RecordCollector(Collector):
    """The daemon's own record, just written as its heartbeat (alive by definition), or
    None once it has stopped cleanly: then only devloop_up 0 remains."""

    def __init__(self, project: str, record: dict[str, Any] | None) -> None:
        self.project, self.record = project, record

    def collect(self) -> Iterator[Metric]:
        healthy = self.record is not None and not self.record.get("problem")
        return families([Snapshot(self.project, self.record, healthy)])


def registry_for(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(projects: Sequence[Path]) -> str:
    """The Prometheus text format for these projects (`devloop metrics DIR`)."""
    return generate_latest(registry_for(ProjectsCollector(projects))).decode("utf-8")


_trouble = Trouble(log, "metrics written again")  # once, not every heartbeat


def write_textfile(path: Path, project: str, record: dict[str, Any] | None) -> None:
    """Atomically replace `path` (node_exporter's textfile collector); errors are logged.

    At a clean stop (record None) the file says `devloop_up 0` rather than going away: a
    stop nobody meant (a deleted project, a bad config, someone's `systemctl stop`) stays
    visible, and no frozen heartbeat is left to page as stale. The operator removes the
    file when the project leaves monitoring for good.
    """
    try:
        text = generate_latest(registry_for(RecordCollector(project, record)))
        atomic_write(path, text, 0o644)  # node_exporter runs as another user
    except OSError as exc:
        _trouble.report(f"cannot write metrics to {path}: {exc.strerror or exc}")
    else:
        _trouble.clear(f"metrics written to {path} again")
