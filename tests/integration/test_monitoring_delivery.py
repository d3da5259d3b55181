"""Real Prometheus and real Alertmanager (Debian's packages) from the rendered files: a scraped
process dies, its alert fires in Prometheus and Alertmanager delivers it to ntfy's address with
the publisher's credentials from its password file and ntfy's template parameters. ntfy itself
is in no registry here: a recording endpoint stands at its address.

The metrics endpoints are stand-ins serving a static page at each declared target's port (the
test does not boot Synapse); the processes the test renders for are staging's. Only the test
render shortens the timings: `for` of 5s, scrape and evaluation every second, group_wait 1s.
Run it in a private network namespace (fixed loopback ports)."""

from __future__ import annotations

import base64
import shutil
import socketserver
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.checks import view_of
from components.monitoring import alerts as alert_table
from components.monitoring import render as mon
from render.__main__ import stack_config
from stack import parse
from tests.conftest import ROOT

from . import alert_delivery
from .alert_delivery import PASSWORD, NtfyRecorder, Quiet, serve, wait
from .polling import get_json

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which(alert_delivery.ALERTMANAGER)
pytestmark = pytest.mark.skipif(PROMETHEUS is None or ALERTMANAGER is None,
                                reason="Debian prometheus and prometheus-alertmanager")


class _Metrics(Quiet):
    def do_GET(self) -> None:
        body = b"# TYPE stand_in gauge\nstand_in 1\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)


def test_a_dead_process_pages_through_alertmanager_to_ntfy(tmp_path: Path, say: Any) -> None:
    raw, secret_keys = stack_config("staging", ROOT)
    cfg = parse(raw, tuple(secret_keys))
    view = view_of(cfg)[0]
    targets = view.metrics_targets
    alerts = alert_table.stack_alerts(targets)
    # Stand-ins on loopback at each scraped address's port (Prometheus and Alertmanager are real).
    stand_ins: dict[int, socketserver.TCPServer] = {}
    for _t, service, port, _path in mon.scrape_targets(cfg, targets):
        if service not in (mon.PROMETHEUS, mon.ALERTMANAGER):
            stand_ins.setdefault(port, serve(port, _Metrics))
    ntfy = NtfyRecorder()
    rules = tmp_path / "stack.rules.yml"
    rules.write_text(mon.rules_yml(alerts, minutes=lambda _m: "5s"))
    conf = mon.prometheus_config(cfg, targets, address=lambda _s, port: f"127.0.0.1:{port}", evaluation_seconds=1)
    conf["global"]["scrape_interval"] = "1s"
    conf["rule_files"] = [str(rules)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(conf, sort_keys=False))
    api = f"http://127.0.0.1:{mon.PROMETHEUS_PORT}/api/v1"
    with alert_delivery.alertmanager(cfg, tmp_path, ntfy.base):
        prometheus = subprocess.Popen([PROMETHEUS or "", f"--config.file={tmp_path / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={tmp_path / 'tsdb'}", *alert_delivery.PROMETHEUS_FLAGS,
                                       f"--web.listen-address=127.0.0.1:{mon.PROMETHEUS_PORT}"],
                                      stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prom.log", "w"))
        try:
            def all_up() -> bool:
                try:
                    result = get_json(f"{api}/query?query=up")["data"]["result"]
                except OSError:
                    return False
                return len(result) == len(targets) and all(r["value"][1] == "1" for r in result)

            wait("every declared target up", all_up)
            up = get_json(f"{api}/query?query=up")["data"]["result"]
            assert {r["metric"]["instance"] for r in up} == {t.service for t in targets}
            say(f"every declared target up: {len(up)}")
            victim = next(t for t in targets if t.role == "generic")
            time.sleep(3)
            assert ntfy.received == [], ntfy.received  # healthy: nothing delivered
            stand_ins.pop(victim.port).shutdown()
            killed = time.monotonic()

            delivery = wait("the alert at ntfy's address", lambda: ntfy.first("SynapseProcessDown"))
            say(f"kill -> delivery at ntfy's address: {delivery.at - killed:.1f}s")
            url = urllib.parse.urlsplit(delivery.path)
            assert url.path == f"/{cfg.monitoring.ntfy_topic}"
            query = urllib.parse.parse_qs(url.query)
            assert query["tpl"] == ["yes"] and "alertname" in query["t"][0]
            assert delivery.authorization == "Basic " + base64.b64encode(
                f"{cfg.monitoring.ntfy_user}:{PASSWORD}".encode()).decode()
            assert victim.service.encode() in delivery.body
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=20)
            for server in stand_ins.values():
                server.shutdown()
            ntfy.close()
