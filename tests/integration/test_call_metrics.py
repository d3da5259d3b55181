"""LiveKit's metrics under real Prometheus: the LiveKit server built from its Go module at the
pinned tag (scripts/test) starts from the rendered livekit.yaml and key file, Debian's Prometheus
scrapes it from the rendered prometheus.yml, and the calls dashboard's LiveKit queries answer
while a participant (PyPI's livekit rtc SDK) publishes a microphone track in a room created
through LiveKit's API.

Only addresses and paths are rewritten for loopback: the key file's path, the SFU's advertised
media address (its node_ip, so the participant's ICE reaches it) and every scrape target's host.
coturn (Debian's 4.6.1 is built without Prometheus), ntfy and MAS (in no registry here) are proved
by their image facts and published config keys instead (tests/unit/test_call_metrics.py,
tests/unit/test_mas.py). Run it in a private network namespace (fixed loopback ports) that has an
interface besides loopback, which the participant's WebRTC stack needs to gather any candidate
(it ignores loopback): `ip link add v0 type veth peer name v1 && ip addr add 10.99.0.1/24 dev v0
&& ip link set v0 up && ip link set v1 up`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from livekit import api

from components.checks import view_of
from components.element_call import ElementCall
from components.element_call import render as ec
from components.monitoring import alerts as alert_table
from components.monitoring import dashboards
from components.monitoring import render as mon
from render.__main__ import stack_config
from stack import parse
from tests.conftest import ROOT

from . import dashboard_queries
from .calls import PARTICIPANT, livekit_binary
from .cluster import synapse_python
from .polling import wait_for

PROMETHEUS = shutil.which("prometheus")
SCRAPE_SECONDS = 1
# The LiveKit API secret a deployment generates (components/secrets.py): a test value here.
SECRET = "a-test-livekit-secret-of-forty-eight-characters!!"
ROOM = "metrics-test-room"
STAY_S = 40




def _routed_interfaces() -> list[str]:
    """The interfaces besides loopback with an IPv4 route (/proc/net/route)."""
    lines = Path("/proc/net/route").read_text().splitlines()[1:]
    return sorted({line.split()[0] for line in lines if line.split() and line.split()[0] != "lo"})


def _livekit_files(tmp_path: Path, service: Any) -> Path:
    """The rendered livekit.yaml and key file, with the key file's path and the media address
    rewritten for loopback."""
    files = {f.path: f.content for f in service.files}
    keys = tmp_path / "livekit-keys.yaml"
    keys.write_text(str(files[ec.LIVEKIT_KEYS]))
    os.chmod(keys, 0o400)
    conf = yaml.safe_load(str(files[ec.LIVEKIT_CONFIG]))
    conf["key_file"] = str(keys)
    conf["rtc"]["node_ip"] = "127.0.0.1"
    path = tmp_path / "livekit.yaml"
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    return path


def _create_room(key: str) -> None:
    token = api.AccessToken(key, SECRET).with_grants(api.VideoGrants(room_create=True)).to_jwt()
    request = urllib.request.Request(
        f"http://127.0.0.1:{ec.LIVEKIT_PORT}/twirp/livekit.RoomService/CreateRoom",
        data=json.dumps({"name": ROOM, "empty_timeout": 300}).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["name"] == ROOM


def _join_token(key: str) -> str:
    grants = api.VideoGrants(room_join=True, room_create=False, can_publish=True, can_subscribe=True, room=ROOM)
    return api.AccessToken(key, SECRET).with_identity("speaker").with_grants(grants).to_jwt()


def _value(api_url: str, expr: str) -> float | None:
    result = dashboard_queries.instant(api_url, expr)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_livekit_and_the_calls_dashboard_reads_it(tmp_path: Path, say: Any) -> None:
    assert PROMETHEUS, "Debian's prometheus package is needed: scripts/test installs it"
    assert _routed_interfaces(), "no interface besides loopback: the participant cannot gather ICE candidates " \
                                 "(see this module's docstring for a veth pair in a private namespace)"
    raw, secret_keys = stack_config("staging", ROOT)
    cfg = parse(raw, tuple(secret_keys))
    view = view_of(cfg)[0]
    [livekit] = [s for s in ElementCall().services(cfg, view, {"livekit": SECRET}) if s.name == ec.LIVEKIT_SERVICE]
    config = _livekit_files(tmp_path, livekit)
    targets = view.metrics_targets
    [target] = [t for t in targets if t.service == ec.LIVEKIT_SERVICE]

    # The rendered scrape config, every target's host relocated to loopback.
    conf = mon.prometheus_config(cfg, targets, address=lambda _service, port: f"127.0.0.1:{port}")
    conf["global"]["scrape_interval"] = f"{SCRAPE_SECONDS}s"
    conf["rule_files"] = []
    conf.pop("alerting")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(conf, sort_keys=False))
    [key] = yaml.safe_load((tmp_path / "livekit-keys.yaml").read_text())

    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("livekit", "prometheus", "participant")}
    procs = [subprocess.Popen([str(livekit_binary()), *[str(config) if a == ec.LIVEKIT_CONFIG else a
                                                          for a in livekit.args]],
                              stdout=logs["livekit"], stderr=subprocess.STDOUT)]
    try:
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{mon.PROMETHEUS_PORT}"],
            stdout=subprocess.DEVNULL, stderr=logs["prometheus"]))
        api_url = f"http://127.0.0.1:{mon.PROMETHEUS_PORT}/api/v1"
        started = time.monotonic()
        up = f'up{{job="{target.job_name}",instance="{target.service}",role="{target.role}"}}'
        wait_for("LiveKit's target up in Prometheus", lambda: _value(api_url, up) == 1)
        say(f"LiveKit target up {time.monotonic() - started:.1f}s after Prometheus started")

        _create_room(str(key))
        speaker = subprocess.Popen([synapse_python(), str(PARTICIPANT), f"ws://127.0.0.1:{ec.LIVEKIT_PORT}",
                                    _join_token(str(key)), str(STAY_S), "publish"],
                                   stdout=subprocess.PIPE, stderr=logs["participant"], text=True)
        procs.append(speaker)
        joined = json.loads(speaker.stdout.readline() if speaker.stdout else "{}")
        assert joined.get("publishing"), joined

        sel = f'job="{dashboards.LIVEKIT_JOB}"'
        wanted = {f"sum(livekit_room_total{{{sel}}})": 1, f"sum(livekit_participant_total{{{sel}}})": 1,
                  f'sum(livekit_track_published_total{{{sel},kind="AUDIO"}})': 1}
        seen = wait_for("the room, the participant and its track in Prometheus",
                     lambda: (v := {e: _value(api_url, e) for e in wanted}) == wanted and v, timeout=STAY_S)
        say(f"LiveKit series in Prometheus: {seen}")
        packets = wait_for("packets counted", lambda: _value(
            api_url, f"sum(rate(livekit_packet_total{{{sel}}}[{dashboard_queries.RATE_WINDOW}]))"), timeout=STAY_S)
        say(f"LiveKit packets per second: {packets:.1f}")

        # Every LiveKit query of the rendered calls dashboard answers.
        alerts = alert_table.stack_alerts(targets, view.probes)
        model = json.loads(dashboards.dashboards(targets, alerts)["matrix-stack-calls.json"])
        livekit_queries = {f"{title}: {expr}": expr.replace(dashboards.RATE, dashboard_queries.RATE_WINDOW)
                           for title, expr in dashboards.queries(model) if "livekit_" in expr}
        assert len(livekit_queries) >= 5
        empty = [label for label, expr in livekit_queries.items() if not dashboard_queries.instant(api_url, expr)]
        assert not empty, empty
        say(f"{len(livekit_queries)} LiveKit queries of the calls dashboard answered")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs.values():
            log.close()
