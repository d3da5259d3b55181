"""Debian's real Prometheus (and its nginx, PostgreSQL and Redis exporters) scraping a booted
cluster (cluster.py) from the rendered prometheus.yml, addresses relocated to loopback, and every
query of the rendered Grafana dashboards evaluated against it.

Grafana is in no registry here: Prometheus answers each panel's PromQL as Grafana would send it,
with Grafana's $__rate_interval replaced by a window of several test scrapes."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.checks import view_of
from components.monitoring import alerts as alert_table
from components.monitoring import dashboards
from components.monitoring import render as mon

from . import alert_delivery
from .cluster import Cluster

PROMETHEUS = "prometheus"
EXPORTERS = {"nginx": "prometheus-nginx-exporter", "postgres": "prometheus-postgres-exporter",
             "redis": "prometheus-redis-exporter"}
# Five seconds (the scrape timeout too): a Synapse process on a busy two-core machine may take
# seconds to answer, and a scrape that times out marks the target's series stale until the next.
SCRAPE_SECONDS = 5
# Grafana's $__rate_interval is at least four scrape intervals.
RATE_WINDOW = "30s"
# A target counts as up when one of its scrapes in this window succeeded.
UP_WINDOW = "20s"


def missing_binaries() -> list[str]:
    return [name for name in (PROMETHEUS, *EXPORTERS.values()) if shutil.which(name) is None]


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def instant(api: str, expr: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = get(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))["data"]["result"]
    return result


@dataclass
class Scraped:
    api: str
    dashboards: dict[str, dict[str, Any]]
    synapse_targets: list[str]
    target_count: int


def _exporter_command(kind: str, cluster: Cluster, port: int, base: Path) -> tuple[list[str], dict[str, str]]:
    exe = shutil.which(EXPORTERS[kind]) or EXPORTERS[kind]
    listen = f"127.0.0.1:{port}"
    env = dict(os.environ)
    if kind == "nginx":
        status = next(t for t in view_of(cluster.result.cfg)[0].metrics_targets if t.exporter == "nginx")
        return [exe, f"-nginx.scrape-uri=http://127.0.0.1:{status.port}{status.path}", f"-web.listen-address={listen}"], env
    if kind == "postgres":
        # The cluster's owner role (the monitoring role exists only where monitoring runs).
        password = cluster.file("/secrets/postgres-password").read_text().strip()
        env["DATA_SOURCE_NAME"] = f"postgresql://synapse:{urllib.parse.quote(password)}@127.0.0.1:5432/synapse?sslmode=disable"
        return [exe, f"--web.listen-address={listen}"], env
    password = cluster.file("/secrets/redis_password").read_text().strip()
    passwords = base / "redis_passwords.json"
    passwords.write_text(json.dumps({"redis://127.0.0.1:6379": password}))
    os.chmod(passwords, 0o400)
    return [exe, "--redis.addr=redis://127.0.0.1:6379", f"--redis.password-file={passwords}",
            f"--web.listen-address={listen}"], env


@contextmanager
def scraping(cluster: Cluster, base: Path, *, alertmanager_host: str | None = None,
             alert_for: str | None = None) -> Iterator[Scraped]:
    """Prometheus and the exporters over `cluster`. With `alertmanager_host` (a loopback address
    of its own: a Synapse process may hold Alertmanager's port), Prometheus sends its alerts to
    Alertmanager there and resends them every second; `alert_for` replaces every rule's `for`
    (a test's short wait)."""
    alerting = alertmanager_host is not None
    cfg = cluster.result.cfg
    targets = view_of(cfg)[0].metrics_targets
    alerts = alert_table.stack_alerts(targets)
    hosts = {mon.ALERTMANAGER: alertmanager_host} if alertmanager_host else {}
    rules = base / "stack.rules.yml"
    rules.write_text(mon.rules_yml(alerts) if alert_for is None else mon.rules_yml(alerts, minutes=lambda _m: alert_for))
    conf = mon.prometheus_config(cfg, targets, address=lambda service, port: f"{hosts.get(service, '127.0.0.1')}:{port}",
                                 evaluation_seconds=SCRAPE_SECONDS)
    conf["global"]["scrape_interval"] = f"{SCRAPE_SECONDS}s"
    conf["rule_files"] = [str(rules)]
    if not alerting:
        conf.pop("alerting")
    (base / "prometheus.yml").write_text(yaml.safe_dump(conf, sort_keys=False))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for kind in sorted({t.exporter for t in targets if t.exporter}):
            cmd, env = _exporter_command(kind, cluster, mon.exporter_port(cfg, kind), base)
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                          stderr=open(base / f"{kind}-exporter.log", "w")))
        procs.append(subprocess.Popen(
            [shutil.which(PROMETHEUS) or PROMETHEUS, f"--config.file={base / 'prometheus.yml'}",
             f"--storage.tsdb.path={base / 'tsdb'}", *(alert_delivery.PROMETHEUS_FLAGS if alerting else ()),
             f"--web.listen-address=127.0.0.1:{mon.PROMETHEUS_PORT}"],
            stdout=subprocess.DEVNULL, stderr=open(base / "prometheus.log", "w")))
        api = f"http://127.0.0.1:{mon.PROMETHEUS_PORT}/api/v1"
        files = dashboards.dashboards(targets, alerts)
        yield Scraped(api, {name: json.loads(text) for name, text in files.items()},
                      [t.service for t in targets if t.job_name == alert_table.SYNAPSE_JOB], len(targets))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)


def up_targets(api: str) -> list[dict[str, Any]]:
    """Every scraped target with whether one of its scrapes in UP_WINDOW succeeded."""
    return instant(api, f"max_over_time(up[{UP_WINDOW}])")


def wait_all_up(api: str, count: int, timeout: float = 90) -> list[dict[str, Any]]:
    """Every scraped target up (`count` of them), then enough scrapes for a rate window."""
    end = time.monotonic() + timeout
    up: list[dict[str, Any]] = []
    while time.monotonic() < end:
        try:
            up = up_targets(api)
        except OSError:
            up = []
        if len(up) == count and all(r["value"][1] == "1" for r in up):
            time.sleep(2 * SCRAPE_SECONDS)
            return up
        time.sleep(1)
    down = sorted(r["metric"].get("instance", "?") for r in up if r["value"][1] != "1")
    raise AssertionError(f"not every target up within {timeout}s ({len(up)} of {count} scraped; down: {down})")


def empty_panels(api: str, models: dict[str, dict[str, Any]]) -> tuple[int, list[str]]:
    """How many queries were evaluated, and the ones that returned nothing (asked again over a
    few scrapes: one scrape that timed out leaves a target's series stale until the next)."""
    queries = [(f"{name}: {title}: {expr}", expr.replace(dashboards.RATE, RATE_WINDOW))
               for name, model in models.items() for title, expr in dashboards.queries(model)]
    empty = [label for label, expr in queries if not instant(api, expr)]
    for _again in range(3):
        if not empty:
            break
        time.sleep(SCRAPE_SECONDS)
        by_label = dict(queries)
        empty = [label for label in empty if not instant(api, by_label[label])]
    return len(queries), empty


def _legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template) or template


def draw(api: str, model: dict[str, Any], start: float, end: float, path: Path) -> None:
    """A picture of a dashboard (docs/): each of its panels drawn from the panel's own queries over
    [start, end] as Prometheus answers them, a stat panel as its last value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in model["panels"] if p["type"] in ("stat", "timeseries")]
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(16, 2.8 * rows), squeeze=False)
    step = f"{SCRAPE_SECONDS}s"
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.set_title(panel["title"], fontsize=9)
        ax.tick_params(labelsize=7)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        for target in panel["targets"]:
            query = {"query": target["expr"].replace(dashboards.RATE, RATE_WINDOW), "start": start, "end": end,
                     "step": step}
            result = get(f"{api}/query_range?" + urllib.parse.urlencode(query))["data"]["result"]
            for series in result:
                times = [float(t) - start for t, _v in series["values"]]
                values = [float(v) for _t, v in series["values"]]
                label = _legend(target.get("legendFormat", ""), series["metric"])
                if panel["type"] == "stat":
                    ax.text(0.5, 0.45, f"{values[-1]:g}", fontsize=26, ha="center", va="center",
                            transform=ax.transAxes)
                    ax.set_xticks([])
                    ax.set_yticks([])
                else:
                    ax.plot(times, values, label=label, linewidth=1)
        if panel["type"] == "timeseries":
            ax.set_xlabel("seconds", fontsize=7)
            if unit:
                ax.set_ylabel(unit, fontsize=7)
            handles, _labels = ax.get_legend_handles_labels()
            if 0 < len(handles) <= 8:
                ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{model['title']} (a booted test cluster under a short load)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
