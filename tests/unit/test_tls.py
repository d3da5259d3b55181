"""Which certificate each hostname gets, the scripts that keep them, and the resources that
issue them (under mocks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import config
import stack
from components.edge.render import proxy_run_script
from components.tls import PLACEHOLDER_PY, acme_script
from components.view.certificates import Certificate
from config import images
from tests.conftest import stack_view


def certificates(cfg: config.StackConfig) -> list[Certificate]:
    return list(stack_view(cfg).certificates)


def certificate_sources(cfg: config.StackConfig) -> dict[str, str]:
    return dict(stack_view(cfg).certificate_sources)


def certificate_source(cfg: config.StackConfig, hostname: str) -> str | None:
    return stack_view(cfg).certificate_sources.get(hostname)


def proxy_terminates_tls(cfg: config.StackConfig) -> bool:
    return bool(stack_view(cfg).proxy_terminates_tls)


def runs_acme_client(cfg: config.StackConfig) -> bool:
    return bool(stack_view(cfg).runs_acme_client)

ORIGIN_IP = "203.0.113.10"
TOKEN = ("cloudflare_api_token",)


def _cfg(**overrides: Any) -> config.StackConfig:
    raw: dict[str, Any] = {"server_name": "example.org", "tls": {"acme_email": "ops@example.org"}}
    raw.update(overrides)
    secret = TOKEN if "cloudflare_api_token" in raw else ()
    return stack.parse(raw, secret)


def _cloudflare(**tls: Any) -> dict[str, Any]:
    return {
        "cloudflare": {"enabled": True, "zone": "example.org", "origin_ip": ORIGIN_IP},
        "cloudflare_api_token": "stand-in-token",
        "tls": tls,
    }


def test_localhost_runs_plain_http() -> None:
    cfg = stack.parse({"server_name": "localhost"})
    assert not proxy_terminates_tls(cfg)
    assert certificates(cfg) == []


def test_kubernetes_proxy_stays_plain_behind_the_ingress() -> None:
    cfg = _cfg(target={"kind": "kubernetes", "cert_manager_issuer": "letsencrypt"})
    assert not proxy_terminates_tls(cfg)
    # cert-manager, not a certbot container, keeps the directly reached names' certificates.
    assert not runs_acme_client(cfg)
    assert set(certificate_sources(cfg).values()) == {"acme"}


def test_kubernetes_follows_the_docker_plan_per_hostname() -> None:
    docker = _cfg(**_cloudflare(mode="origin_ca"))
    kube = _cfg(**_cloudflare(mode="origin_ca"), target={"kind": "kubernetes", "cert_manager_issuer": "le"})
    assert certificate_sources(kube) == certificate_sources(docker)
    assert certificates(kube) == certificates(docker)
    assert certificate_source(kube, "livekit.example.org") == "acme"
    assert certificate_source(kube, "example.org") == certificate_source(kube, "call.example.org") == "origin_ca"
    assert certificate_source(kube, "turn.example.org") is None  # not an HTTP host
    assert runs_acme_client(docker) and not runs_acme_client(kube)
    plain = _cfg(tls={"mode": "none"}, target={"kind": "kubernetes"})
    assert certificate_sources(plain) == {} and certificates(plain) == []


def test_without_cloudflare_every_host_gets_its_own_acme_certificate() -> None:
    certs = certificates(_cfg())
    assert {c.source for c in certs} == {"acme"}
    assert all(len(c.hostnames) == 1 for c in certs)
    names = [c.hostnames[0] for c in certs]
    assert names[0] == "example.org"
    assert {"call.example.org", "jwt.example.org", "livekit.example.org", "ntfy.example.org"} <= set(names)


def test_origin_ca_covers_proxied_hosts_and_acme_the_direct_ones() -> None:
    certs = certificates(_cfg(**_cloudflare(mode="origin_ca")))
    origin = [c for c in certs if c.source == "origin_ca"]
    acme = [c for c in certs if c.source == "acme"]
    assert len(origin) == 1
    # LiveKit is DNS-only (WebRTC cannot cross Cloudflare's proxy): browsers reach it directly,
    # so an Origin CA certificate would be untrusted there.
    assert "livekit.example.org" not in origin[0].hostnames
    assert [c.name for c in acme] == ["livekit.example.org"]
    assert {"example.org", "call.example.org", "jwt.example.org"} <= set(origin[0].hostnames)


def _sh_syntax(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "script.sh"
    path.write_text(script)
    return subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, timeout=30)


def test_acme_and_proxy_scripts_are_valid_shell(tmp_path: Path) -> None:
    cfg = _cfg()
    script = acme_script(cfg, certificates(cfg))
    assert _sh_syntax(script, tmp_path).returncode == 0
    assert "--webroot -w /var/www/acme" in script
    assert "ops@example.org" in script
    broken = _sh_syntax(script.replace("done", "", 1), tmp_path)
    assert broken.returncode != 0  # the check can fail
    for watch in (True, False):
        run = proxy_run_script("/etc/nginx/live/nginx.conf", watch)
        assert _sh_syntax(run, tmp_path).returncode == 0
        assert ("watch_certificates &" in run) is watch
        assert "LIVE=/etc/nginx/live/nginx.conf" in run
        assert run.rstrip().endswith("exec nginx -c \"$CONF\" -g 'daemon off;'")


def test_placeholder_certificate_is_a_valid_key_pair(tmp_path: Path) -> None:
    script = tmp_path / "placeholder.py"
    script.write_text(PLACEHOLDER_PY)
    subprocess.run([sys.executable, str(script), str(tmp_path / "out"), "call.example.org"], check=True, timeout=60)
    cert = subprocess.run(["openssl", "x509", "-noout", "-subject", "-ext", "subjectAltName", "-in",
                           str(tmp_path / "out" / "fullchain.pem")], capture_output=True, text=True, check=True)
    assert "call.example.org" in cert.stdout
    pub_from_cert = subprocess.run(["openssl", "x509", "-noout", "-pubkey", "-in", str(tmp_path / "out" / "fullchain.pem")],
                                   capture_output=True, text=True, check=True).stdout
    pub_from_key = subprocess.run(["openssl", "pkey", "-pubout", "-in", str(tmp_path / "out" / "privkey.pem")],
                                  capture_output=True, text=True, check=True).stdout
    assert pub_from_cert == pub_from_key


def _files(run: Any, service: str) -> dict[str, dict[str, Any]]:
    item = next(s for s in run.services if s["service"].name == service)
    return {f["path"]: f for f in item["files"]}


def test_origin_ca_certificate_is_requested_with_the_stack_provider(program: Any) -> None:
    raw = {"server_name": "example.org", **_cloudflare(mode="origin_ca"), "element_call": {"enabled": False}}
    run = program(raw, secret_keys=TOKEN)
    issued = run.of_type("cloudflare:index/originCaCertificate:OriginCaCertificate")
    assert len(issued) == 1
    inputs = issued[0].plain_inputs()
    assert inputs["requestType"] == "origin-ecc"
    assert "example.org" in inputs["hostnames"]
    providers = run.of_type("pulumi:providers:cloudflare")
    assert len(providers) == 1  # the DNS records' provider, not a second token
    assert issued[0].provider.startswith(providers[0].urn + "::")
    proxy = _files(run, "synapse-proxy")
    assert proxy["/etc/nginx/tls/origin.key"]["secret"] is True
    assert proxy["/etc/nginx/tls/origin.crt"]["secret"] is False
    # No DNS-only HTTP host without Element Call: no ACME client at all.
    assert not any(s["service"].name == "acme" for s in run.services)


def test_acme_client_shares_volumes_with_the_proxy(program: Any) -> None:
    run = program({"server_name": "example.org", "tls": {"acme_email": "ops@example.org"}})
    services = {s["service"].name: s["service"] for s in run.services}
    acme, proxy = services["acme"], services["synapse-proxy"]
    assert {v.name for v in acme.volumes} == {v.name for v in proxy.volumes} == {"acme-certs", "acme-webroot"}
    assert all(v.read_only for v in proxy.volumes)
    assert any(p.name == "https" and p.public for p in proxy.ports)
    script = _files(run, "synapse-proxy")["/conf/proxy-run.sh"]["content"]
    assert "watch_certificates &" in script and 'nginx -c "$CONF" -s reload' in script
    assert proxy.args == ("/conf/proxy-run.sh",)


def test_certbot_runs_unprivileged_and_writes_only_what_it_owns(program: Any) -> None:
    run = program({"server_name": "example.org", "tls": {"acme_email": "ops@example.org"}})
    services = {s["service"].name: s["service"] for s in run.services}
    acme, proxy = services["acme"], services["synapse-proxy"]
    # Nobody, in the proxy's group: not root, not the proxy's user (which would read its account).
    uid, gid = acme.user.split(":")
    proxy_uid, proxy_gid = proxy.user.split(":")
    assert uid not in ("0", proxy_uid) and gid == proxy_gid
    assert acme.read_only_root and acme.drop_capabilities and not acme.capabilities_add
    # Every directory certbot writes by default (its image's facts) is moved by its flag to a
    # volume its user owns whole (a root certbot's leftovers too) or to its scratch directory,
    # and so is the webroot it writes the challenges to.
    script = _files(run, "acme")["/conf/acme/run.sh"]["content"]
    certbot = next(line for line in script.splitlines() if "certbot certonly" in line).split()
    owned = {v.path for v in acme.volumes if v.owner == acme.user and v.owner_recursive}
    state_dirs = images.facts_for(images.CERTBOT).state_dirs
    assert set(state_dirs) == {"--config-dir", "--work-dir", "--logs-dir"}
    for flag in [*state_dirs, "-w"]:
        where = certbot[certbot.index(flag) + 1]
        assert where in owned or any(where.startswith(f"{p}/") for p in acme.writable_paths), (flag, where)
    # Nothing it runs needs root: the copies nginx reads are the proxy's group's already.
    assert "chown" not in script and 'chmod 0440 "$served/$1/"*.new' in script
    # The adapter hands those volumes to certbot's user, the whole tree; other volumes only their root.
    owners = {str(c.plain_inputs()["name"]): c.plain_inputs()["entrypoints"]
              for c in run.of_type("docker:index/container:Container") if str(c.name).endswith("-owner")}
    assert owners["matrix-stack-acme-certs-owner"] == ["chown", "-R", acme.user, "/etc/letsencrypt"]
    assert owners["matrix-stack-acme-webroot-owner"] == ["chown", "-R", acme.user, "/var/www/acme"]
    assert any("-R" not in command for command in owners.values())


def test_acme_client_must_sit_with_the_proxy() -> None:
    with pytest.raises(config.ConfigError) as err:
        _cfg(target={"kind": "docker", "hosts": [
            {"name": "a", "url": "ssh://root@a.example.org", "address": "192.0.2.1"},
            {"name": "b", "url": "ssh://root@b.example.org", "address": "192.0.2.2", "services": ["acme"]},
        ]})
    assert "acme" in str(err.value)


def test_without_acme_the_run_script_watches_only_upstream_addresses(program: Any) -> None:
    run = program({"server_name": "localhost"})
    proxy = next(s["service"] for s in run.services if s["service"].name == "synapse-proxy")
    assert proxy.entrypoint == ("/bin/sh",) and proxy.args == ("/conf/proxy-run.sh",)
    script = _files(run, "synapse-proxy")["/conf/proxy-run.sh"]["content"]
    assert "watch &" in script and "watch_certificates" not in script
    assert script.rstrip().endswith("exec nginx -c \"$CONF\" -g 'daemon off;'")


def test_tls_listeners_enable_http2_in_the_form_nginx_1_22_and_1_29_both_accept(program: Any) -> None:
    """`http2 on;` (nginx >= 1.25.1) is unknown to Debian's 1.22, which the tests run; `listen ...
    ssl http2` works on both (1.29 only warns), so it stays until the tested nginx is newer."""
    run = program({"server_name": "example.org", "tls": {"mode": "acme", "acme_email": "ops@example.org"},
                   "element_call": {"enabled": False}})
    proxy = next(s for s in run.services if s["service"].name == "synapse-proxy")
    nginx = next(f["content"] for f in proxy["files"] if f["path"] == "/etc/nginx/live/nginx.conf")
    listens = [line.strip() for line in nginx.splitlines() if line.strip().startswith("listen 8443")]
    assert listens and set(listens) == {"listen 8443 ssl http2;"}
    assert "http2 on;" not in nginx
