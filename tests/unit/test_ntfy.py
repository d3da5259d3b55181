"""ntfy under mocks: the exact base-url, the private-instance rules, the admin user and the
Synapse whitelist for a private address."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pulumi
import yaml

from components.ntfy import render as ntfy
from render import offline

BASE: dict[str, Any] = {
    "server_name": "example.org",
    "tls": {"mode": "acme", "acme_email": "ops@example.org"},
}


def _entry(run: Any, name: str = "ntfy") -> dict[str, Any]:
    return next(s for s in run.services if s["service"].name == name)


def _server_yml(run: Any) -> dict[str, Any]:
    return yaml.safe_load(next(f["content"] for f in _entry(run)["files"] if f["path"] == ntfy.CONFIG))


def _homeserver(run: Any) -> dict[str, Any]:
    main = _entry(run, "synapse-main")
    return yaml.safe_load(next(f["content"] for f in main["files"] if f["path"] == "/conf/homeserver.yaml"))


def test_server_yml_has_the_exact_base_url_and_private_rules(program: Any) -> None:
    run = program(BASE)
    conf = _server_yml(run)
    assert conf["base-url"] == "https://ntfy.example.org"  # the pushkey prefix: no slash, no path
    assert conf["listen-http"] == ":8080"
    assert conf["behind-proxy"] is True
    assert conf["auth-file"] == "/var/lib/ntfy/user.db"
    assert conf["auth-default-access"] == "deny-all"
    assert conf["auth-access"] == ["*:up*:write-only"]
    assert conf["cache-file"].startswith("/var/cache/ntfy/")
    assert conf["upstream-base-url"] == "https://ntfy.sh"
    assert len(conf["auth-users"]) == 1  # the admin's hash: the config file is a secret file
    assert next(f for f in _entry(run)["files"] if f["path"] == ntfy.CONFIG)["secret"]
    service = _entry(run)["service"]
    assert {v.path for v in service.volumes} == {"/var/cache/ntfy", "/var/lib/ntfy"}


def test_base_url_follows_custom_hostname_and_local_port(program: Any) -> None:
    run = program({**BASE, "hostnames": {"ntfy": "push.example.org"}, "ntfy": {"upstream_base_url": None}})
    conf = _server_yml(run)
    assert conf["base-url"] == "https://push.example.org"
    assert "upstream-base-url" not in conf
    assert run.deployment.outputs["ntfy_push_gateway_url"] == "https://push.example.org/_matrix/push/v1/notify"
    local = program({"server_name": "localhost", "target": {"kind": "docker", "http_port": 8080}})
    assert _server_yml(local)["base-url"] == "http://ntfy.localhost:8080"


def test_admin_user_hash_matches_the_secret_password_output(program: Any) -> None:
    run = program(BASE)
    [users] = _server_yml(run)["auth-users"]
    assert not _entry(run)["env"]
    name, digest, role = users.split(":")
    assert (name, role) == ("admin", "admin")
    outputs = run.deployment.outputs
    password = outputs["ntfy_admin_password"]
    assert isinstance(password, pulumi.Output)
    loop = asyncio.new_event_loop()
    try:
        value = loop.run_until_complete(password.future())
        is_secret = loop.run_until_complete(password.is_secret())
    finally:
        loop.close()
    assert is_secret
    # The hash ntfy receives is the one pulumi-random computes for the password that is exported.
    assert digest == offline.bcrypt_stand_in("ntfy-admin-password", value)
    assert re.fullmatch(r"\$2a\$10\$[./A-Za-z0-9]{53}", digest)
    assert outputs["ntfy_admin_user"] == "admin"


def test_site_and_no_whitelist_for_a_public_address(program: Any) -> None:
    run = program(BASE)
    nginx = next(f["content"] for f in _entry(run, "synapse-proxy")["files"] if f["path"].endswith("nginx.conf"))
    assert "server_name ntfy.example.org;" in nginx
    assert "ip_range_whitelist" not in _homeserver(run)


def test_private_address_is_whitelisted_for_synapse(program: Any) -> None:
    run = program({**BASE, "ntfy": {"private_address": "192.168.1.20"}})
    assert _homeserver(run)["ip_range_whitelist"] == ["192.168.1.20/32"]


def test_ntfy_off(program: Any) -> None:
    run = program({**BASE, "ntfy": {"enabled": False}})
    assert "ntfy" not in {s["service"].name for s in run.services}
    assert "ntfy_admin_password" not in run.deployment.outputs
