"""A private federation's settings: the proxy's provided certificate, the trusted CA files, the
private networks federation may dial, and the whitelists; each bad value refused by the config
check with the field's name, before any resource."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import config
import stack
from render import offline
from tests.pki import PrivateCA

KEY = ("tls_private_key",)


@pytest.fixture
def ca(tmp_path: Path) -> PrivateCA:
    return PrivateCA(tmp_path)


def _raw(ca: PrivateCA, **synapse_federation: Any) -> dict[str, Any]:
    chain, key = ca.issue("example", ("example.org", "matrix.example.org", "ntfy.example.org"))
    return {
        "server_name": "example.org",
        "hostnames": {"matrix": "matrix.example.org"},
        "tls": {"mode": "provided", "certificate_file": str(chain)},
        "tls_private_key": key,
        "element_call": {"enabled": False},
        "element_web": {"enabled": False},
        "ntfy": {"enabled": False},
        "synapse": {"federation": {"trusted_ca_files": [str(ca.path)], "private_networks": ["10.0.0.0/8"],
                                   **synapse_federation}},
    }


def _problems(raw: dict[str, Any], secret_keys: tuple[str, ...] = KEY) -> dict[str, str]:
    with pytest.raises(config.ConfigError) as caught:
        stack.parse(raw, secret_keys)
    return {p.path: f"{p.message} (got {p.value})" for p in caught.value.problems}


def test_a_private_federation_config_parses(ca: PrivateCA) -> None:
    cfg = stack.parse(_raw(ca), KEY)
    assert cfg.tls_mode == "provided"


def test_a_trusted_ca_path_that_does_not_exist_is_refused(ca: PrivateCA, tmp_path: Path) -> None:
    raw = _raw(ca)
    raw["synapse"]["federation"]["trusted_ca_files"] = [str(ca.path), "/nonexistent/missing-ca.pem"]
    problems = _problems(raw)
    assert list(problems) == ["synapse.federation.trusted_ca_files[1]"]
    assert "existing file" in problems["synapse.federation.trusted_ca_files[1]"]
    assert "missing-ca.pem" in problems["synapse.federation.trusted_ca_files[1]"]


def test_a_trusted_ca_file_must_hold_one_ca_certificate(ca: PrivateCA, tmp_path: Path) -> None:
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("hello")
    server_chain, _key = ca.issue("leaf", ("example.org",))
    raw = _raw(ca)
    raw["synapse"]["federation"]["trusted_ca_files"] = [str(not_pem), str(server_chain), ""]
    problems = _problems(raw)
    assert "PEM certificate" in problems["synapse.federation.trusted_ca_files[0]"]
    assert "exactly one" in problems["synapse.federation.trusted_ca_files[1]"]
    assert "existing file" in problems["synapse.federation.trusted_ca_files[2]"]


def test_an_empty_trusted_ca_list_is_refused(ca: PrivateCA) -> None:
    problems = _problems(_raw(ca, trusted_ca_files=[]))
    assert "at least one file" in problems["synapse.federation.trusted_ca_files"]


def test_a_whitelist_without_the_stacks_own_server_name_is_refused(ca: PrivateCA) -> None:
    problems = _problems(_raw(ca, domain_whitelist=["other.example"]))
    assert list(problems) == ["synapse.federation.domain_whitelist"]
    assert "example.org" in problems["synapse.federation.domain_whitelist"]
    assert "empty list federates with nobody" in problems["synapse.federation.domain_whitelist"]
    stack.parse(_raw(ca, domain_whitelist=[]), KEY)  # Synapse's "federate with nobody"
    stack.parse(_raw(ca, domain_whitelist=["example.org", "other.example"]), KEY)


def test_denying_the_stacks_own_server_name_is_refused(ca: PrivateCA) -> None:
    problems = _problems(_raw(ca, deny=["evil.example", "example.org"]))
    assert "own server name" in problems["synapse.federation.deny"]


def test_private_networks_must_be_networks(ca: PrivateCA) -> None:
    problems = _problems(_raw(ca, private_networks=["10.0.0.0/8", "not-a-network"]))
    assert "CIDR" in problems["synapse.federation.private_networks[1]"]


def test_the_provided_certificate_must_cover_every_public_hostname(ca: PrivateCA) -> None:
    raw = _raw(ca)
    chain, _key = ca.issue("narrow", ("example.org",))
    raw["tls"]["certificate_file"] = str(chain)
    problems = _problems(raw)
    assert "matrix.example.org" in problems["tls.certificate_file"]


def test_provided_tls_needs_the_file_and_a_secret_key(ca: PrivateCA) -> None:
    raw = _raw(ca)
    del raw["tls"]["certificate_file"]
    del raw["tls_private_key"]
    problems = _problems(raw)
    assert "required" in problems["tls.certificate_file"]
    assert "--secret" in problems["tls_private_key"]
    # A plaintext key is refused and never echoed.
    raw = _raw(ca)
    with pytest.raises(config.ConfigError) as caught:
        stack.parse(raw, ())
    assert "PRIVATE KEY" not in str(caught.value)
    assert any(p.path == "tls_private_key" for p in caught.value.problems)
    raw["tls_private_key"] = "not a key"
    assert "PEM private key" in _problems(raw)["tls_private_key"]


def test_a_certificate_file_without_provided_mode_is_refused(ca: PrivateCA) -> None:
    raw = _raw(ca)
    raw["tls"]["mode"] = "acme"
    raw["tls"]["acme_email"] = "ops@example.org"
    problems = _problems(raw)
    assert "only used with tls.mode: provided" in problems["tls.certificate_file"]
    assert "only used" in problems["tls_private_key"]


def _files(run: offline.Run, service: str) -> dict[str, dict[str, Any]]:
    item = next(s for s in run.services if s["service"].name == service)
    return {f["path"]: f for f in item["files"]}


def test_every_synapse_process_gets_the_ca_and_the_private_networks(ca: PrivateCA,
                                                                   program: Callable[..., offline.Run]) -> None:
    raw = _raw(ca)
    raw["synapse"]["workers"] = {"counts": {"federation_sender": 2, "federation_inbound": 1}}
    raw["ntfy"] = {"enabled": True, "private_address": "192.168.7.0/24"}
    run = program(raw, secret_keys=KEY)
    synapse = [s for s in run.services if s["service"].entrypoint and "synapse.app" in " ".join(s["service"].entrypoint)]
    assert len(synapse) == 4
    for item in synapse:
        files = {f["path"]: f for f in item["files"]}
        shared = yaml.safe_load(files["/conf/homeserver.yaml"]["content"])
        assert shared["federation_custom_ca_list"] == ["/conf/federation-ca-1.pem"]
        assert files["/conf/federation-ca-1.pem"]["content"] == ca.path.read_text()
        # Federation's private network is added to ntfy's, not put in its place.
        assert shared["ip_range_whitelist"] == ["192.168.7.0/24", "10.0.0.0/8"]


def test_the_proxy_serves_the_provided_certificate_with_its_key_secret(ca: PrivateCA,
                                                                      program: Callable[..., offline.Run]) -> None:
    raw = _raw(ca)
    raw["target"] = {"kind": "docker", "https_port": 8448}
    run = program(raw, secret_keys=KEY)
    files = _files(run, "synapse-proxy")
    assert files["/etc/nginx/tls/provided.crt"]["content"] == Path(raw["tls"]["certificate_file"]).read_text()
    assert files["/etc/nginx/tls/provided.key"]["secret"] is True
    assert files["/etc/nginx/tls/provided.crt"]["secret"] is False
    nginx = files["/etc/nginx/live/nginx.conf"]["content"]
    assert "ssl_certificate /etc/nginx/tls/provided.crt;" in nginx
    # Delegation names the port the host publishes the proxy's TLS port on.
    assert '{"m.server":"matrix.example.org:8448"}' in nginx
    assert not any(s["service"].name == "acme" for s in run.services)
    # The key never reaches a plain file.
    key = raw["tls_private_key"].strip().splitlines()[1]
    for item in run.services:
        for f in item["files"]:
            if not f["secret"]:
                assert key not in str(f["content"]), f["path"]
