"""The exporters the monitoring part adds, as Debian packages them at the pinned versions, from
the rendered files under real Prometheus with the rendered prometheus.yml and rule file (only
addresses relocated to loopback and `for` shortened to 5s):

- the blackbox exporter with the rendered blackbox.yml (`--config.check` first) reads the
  certificate of a local TLS server that expires in 3 days (CertificateExpiringSoon fires for it)
  and of one that expires in 60 (quiet), and probes LiveKit's address, where nothing listens
  (CallServiceUnreachable fires);
- node exporter with the rendered arguments (the host's root at / instead of /host) reports the
  filesystems the volume alerts select;
- the Pushgateway takes the backup's report as the backup script sends it (its URL, a form post
  of the rendered text) and Prometheus keeps its job label: a report older than the schedule's
  window fires BackupOverdue.
Run it in a private network namespace (fixed loopback ports)."""

from __future__ import annotations

import http.client
import re
import shutil
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.backup import render as backup
from components.checks import view_of
from components.monitoring import alerts as alert_table
from components.monitoring import blackbox_service, certificate_hostnames, node_exporter_service, stack_alerts
from components.monitoring import render as mon
from components.synapse import homeserver
from render.__main__ import stack_config
from stack import parse
from tests.conftest import ROOT
from tests.pki import self_signed

from .polling import get_json, wait_for

PROGRAMS = {name: shutil.which(name) for name in ("prometheus", "prometheus-node-exporter",
                                                   "prometheus-blackbox-exporter", "prometheus-pushgateway")}
pytestmark = pytest.mark.skipif(None in PROGRAMS.values(), reason="Debian prometheus and its exporters")
EXPIRING_PORT, CURRENT_PORT, LIVEKIT_PORT = 8443, 8444, 17880


def _tls_server(port: int, cert: Path, key: Path) -> threading.Thread:
    """A TLS listener that completes each handshake and closes."""
    import socket

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    sock = socket.create_server(("127.0.0.1", port))

    def serve() -> None:
        while True:
            conn, _ = sock.accept()
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_certificate_call_volume_and_backup_alerts_from_the_real_exporters(tmp_path: Path, say: Any) -> None:
    raw, secret_keys = stack_config("staging", ROOT)
    cfg = parse(raw, tuple(secret_keys))
    view = view_of(cfg)[0]
    hostnames = certificate_hostnames(view)
    assert len(hostnames) >= 2
    expiring_host = hostnames[0]
    # The blackbox exporter's config, checked by the exporter itself.
    blackbox_yml = tmp_path / "blackbox.yml"
    blackbox_yml.write_text(mon.blackbox_yml())
    check = subprocess.run([PROGRAMS["prometheus-blackbox-exporter"] or "", "--config.check",
                            f"--config.file={blackbox_yml}"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    _tls_server(EXPIRING_PORT, *self_signed(tmp_path, expiring_host, days=3))
    _tls_server(CURRENT_PORT, *self_signed(tmp_path, hostnames[1], days=60))

    def address(_service: str, port: int) -> str:
        return f"127.0.0.1:{port}"

    def probe_address(host: str, port: int) -> str:
        if port == mon.HTTPS_PORT:
            return f"127.0.0.1:{EXPIRING_PORT if host == expiring_host else CURRENT_PORT}"
        return f"127.0.0.1:{LIVEKIT_PORT}"  # LiveKit's: nothing listens there

    alerts = stack_alerts(cfg, view)
    rules = tmp_path / "stack.rules.yml"
    rules.write_text(mon.rules_yml(alerts, minutes=lambda _m: "5s"))
    conf = mon.prometheus_config(cfg, view.metrics_targets, address, evaluation_seconds=1, probes=view.probes,
                                 hostnames=hostnames, probe_address=probe_address)
    conf["global"]["scrape_interval"] = "1s"
    conf["rule_files"] = [str(rules)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(conf, sort_keys=False))

    # The backup's report, as backup.sh sends it: its URL's path, and the rendered text with a
    # success older than the schedule's window.
    [url] = re.findall(r"--post-file=\S+ (\S+)", "\n".join(backup.report_lines(view)))
    push_path = urllib.parse.urlsplit(url).path
    window = alert_table.window_minutes(cfg.backup.schedule)
    last_success = int(time.time()) - window * 60 - 600

    node_args = [a.replace(f"--path.rootfs={mon.HOST_ROOT}", "--path.rootfs=/") for a in node_exporter_service(cfg).args
                 if not a.startswith("--web.listen-address")]
    blackbox_args = [a for a in blackbox_service(cfg, view).args if not a.startswith(("--config.file", "--web."))]
    logs = [open(tmp_path / f"{name}.log", "w") for name in ("node", "blackbox", "pushgateway", "prometheus")]
    procs = [
        subprocess.Popen([PROGRAMS["prometheus-node-exporter"] or "", *node_args,
                          f"--web.listen-address=127.0.0.1:{mon.NODE_EXPORTER_PORT}"],
                         stdout=subprocess.DEVNULL, stderr=logs[0]),
        subprocess.Popen([PROGRAMS["prometheus-blackbox-exporter"] or "", *blackbox_args,
                          f"--config.file={blackbox_yml}", f"--web.listen-address=127.0.0.1:{mon.BLACKBOX_PORT}"],
                         stdout=subprocess.DEVNULL, stderr=logs[1]),
        subprocess.Popen([PROGRAMS["prometheus-pushgateway"] or "", f"--persistence.file={tmp_path / 'push.store'}",
                          f"--web.listen-address=127.0.0.1:{mon.PUSHGATEWAY_PORT}"],
                         stdout=subprocess.DEVNULL, stderr=logs[2]),
    ]
    try:
        def pushed() -> bool:
            body = backup.metrics_text(str(last_success), "123456789", "4096").encode()
            conn = http.client.HTTPConnection("127.0.0.1", mon.PUSHGATEWAY_PORT, timeout=5)
            # BusyBox wget --post-file sends a form's content type: the Pushgateway parses text.
            conn.request("POST", push_path, body, {"Content-Type": "application/x-www-form-urlencoded"})
            status = conn.getresponse().status
            conn.close()
            return status == 200

        wait_for("the Pushgateway to take the backup's report", pushed, timeout=90)
        # The media cache cleaner's report, its rendered lines with the real curl.
        cleaner_url = f"http://127.0.0.1:{mon.PUSHGATEWAY_PORT}/metrics/job/{homeserver.MEDIA_CACHE_CLEAN_JOB}"
        reported = subprocess.run(["sh", "-c", "\n".join(homeserver.media_cache_clean_report(cleaner_url))],
                                  capture_output=True, text=True, timeout=60)
        assert reported.returncode == 0 and not reported.stderr, reported.stderr
        reported_at = time.time()
        procs.append(subprocess.Popen(
            [PROGRAMS["prometheus"] or "", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{mon.PROMETHEUS_PORT}"],
            stdout=subprocess.DEVNULL, stderr=logs[3]))
        api = f"http://127.0.0.1:{mon.PROMETHEUS_PORT}/api/v1"

        def firing() -> dict[str, list[dict[str, str]]]:
            out: dict[str, list[dict[str, str]]] = {}
            for alert in get_json(f"{api}/alerts")["data"]["alerts"]:
                if alert["state"] == "firing":
                    out.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
            return out

        wanted = {"CertificateExpiringSoon", "CallServiceUnreachable", "BackupOverdue"}
        started = time.monotonic()
        fired = wait_for(f"{sorted(wanted)} firing", lambda: (f := firing()) and wanted <= set(f) and f, timeout=90)
        say(f"certificate, call and backup alerts firing {time.monotonic() - started:.1f}s after Prometheus started")
        # Only the certificate that expires in 3 days; the 60-day one stays quiet.
        assert [a["instance"] for a in fired["CertificateExpiringSoon"]] == [f"127.0.0.1:{EXPIRING_PORT}"]
        assert fired["CallServiceUnreachable"][0]["probe"] == "livekit"
        assert "CertificateProbeFailing" not in fired
        assert not {"VolumeSpaceLow", "VolumeFillingUp"} & set(fired) or _low_disk()

        def query(expr: str) -> list[dict[str, Any]]:
            return list(get_json(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))["data"]["result"])

        expiry = query(f'probe_ssl_earliest_cert_expiry{{instance="127.0.0.1:{EXPIRING_PORT}"}} - time()')
        assert 2 * 86400 < float(expiry[0]["value"][1]) < 3 * 86400
        # The pushed series keep the backup's job label (honor_labels).
        [size] = query(f'backup_last_size_bytes{{job="{backup.METRICS_JOB}"}}')
        assert size["value"][1] == "123456789"
        [cleaned] = query(f'{homeserver.MEDIA_CACHE_CLEAN_JOB}_last_success_timestamp_seconds'
                          f'{{job="{homeserver.MEDIA_CACHE_CLEAN_JOB}"}}')
        assert abs(float(cleaned["value"][1]) - reported_at) < 60
        # The volume alerts' selector matches what node exporter reports of this machine.
        space_low = next(a for a in alerts if a.name == "VolumeSpaceLow")
        ratio = wait_for("node exporter's filesystems", lambda: query(space_low.expr.rsplit(" < ", 1)[0]), timeout=90)
        say(f"filesystems the volume alerts read: {sorted(r['metric']['mountpoint'] for r in ratio)}")
        assert all(0 <= float(r["value"][1]) <= 1 for r in ratio)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
        for log in logs:
            log.close()


def _low_disk() -> bool:
    """This machine's own disk is low: the volume alerts are right to fire."""
    usage = shutil.disk_usage("/")
    return usage.free / usage.total < alert_table.FREE_RATIO_CRITICAL
