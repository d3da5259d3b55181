"""Cloudflare DNS under mocks: which records exist, where they point and which are proxied."""

from __future__ import annotations

from typing import Any

import pytest

import config

SECRET = ("cloudflare_api_token",)
RECORD = "cloudflare:index/dnsRecord:DnsRecord"


def _raw(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "server_name": "example.org",
        "tls": {"mode": "acme", "acme_email": "ops@example.org"},
        "cloudflare": {"enabled": True, "zone": "example.org", "origin_ip": "198.51.100.10"},
        "cloudflare_api_token": "token-stand-in",
    }
    for key, value in extra.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def _records(run: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r.plain_inputs()["name"], r.plain_inputs()["type"]): r.plain_inputs() for r in run.of_type(RECORD)}


def test_cloudflare_off_creates_no_records_and_no_provider(program: Any) -> None:
    run = program({"server_name": "example.org", "tls": {"mode": "acme", "acme_email": "ops@example.org"}})
    assert not [r for r in run.resources if r.type.startswith("cloudflare:") or "cloudflare" in r.type]


def test_records_point_at_the_origin_with_fqdn_names_and_a_comment(program: Any) -> None:
    run = program(_raw(), stack="staging", secret_keys=SECRET)
    records = _records(run)
    assert set(records) == {(h, "A") for h in ("example.org", "call.example.org", "jwt.example.org",
                                                "livekit.example.org", "app.example.org", "ntfy.example.org")}
    for record in records.values():
        assert record["content"] == "198.51.100.10"
        assert record["ttl"] == 1
        assert record["comment"] == "managed by matrix-stack staging"
        assert record["zoneId"]  # from the zone looked up by name
    for resource in run.of_type(RECORD):
        assert "pulumi:providers:cloudflare::cloudflare::" in resource.provider  # the explicit provider
    provider = next(r for r in run.resources if r.type == "pulumi:providers:cloudflare")
    assert provider.inputs["apiToken"] is not None


def test_acme_keeps_everything_dns_only(program: Any) -> None:
    records = _records(program(_raw(), secret_keys=SECRET))
    assert not any(r["proxied"] for r in records.values())


def test_origin_ca_proxies_http_hosts_but_never_livekit(program: Any) -> None:
    records = _records(program(_raw(tls={"mode": "origin_ca", "acme_email": None}), secret_keys=SECRET))
    proxied = {name for (name, _t), r in records.items() if r["proxied"]}
    assert proxied == {"example.org", "call.example.org", "jwt.example.org", "app.example.org", "ntfy.example.org"}
    assert records[("livekit.example.org", "A")]["proxied"] is False


def test_coturn_adds_a_dns_only_turn_record_at_its_own_address(program: Any) -> None:
    raw = _raw(cloudflare={"proxy_http": True}, coturn={"enabled": True, "external_ip": "198.51.100.20"})
    records = _records(program(raw, secret_keys=SECRET))
    turn = records[("turn.example.org", "A")]
    assert turn["proxied"] is False and turn["content"] == "198.51.100.20"
    assert records[("example.org", "A")]["proxied"] is True


def test_custom_hostnames_and_ipv6(program: Any) -> None:
    raw = _raw(hostnames={"matrix": "matrix.example.org", "livekit": "sfu.example.org", "app": "chat.example.org"},
               cloudflare={"origin_ipv6": "2001:db8::10", "proxy_http": True})
    records = _records(program(raw, secret_keys=SECRET))
    names = {name for name, _t in records}
    assert {"example.org", "matrix.example.org", "sfu.example.org", "chat.example.org"} <= names
    assert "livekit.example.org" not in names and "app.example.org" not in names
    assert records[("sfu.example.org", "AAAA")]["content"] == "2001:db8::10"
    assert records[("sfu.example.org", "AAAA")]["proxied"] is False
    assert records[("matrix.example.org", "AAAA")]["proxied"] is True


def test_a_host_shared_with_livekit_is_dns_only(program: Any) -> None:
    raw = _raw(hostnames={"livekit": "rtc.example.org", "jwt": "rtc.example.org"}, cloudflare={"proxy_http": True})
    run = program(raw, secret_keys=SECRET)
    records = _records(run)
    assert records[("rtc.example.org", "A")]["proxied"] is False
    assert len([r for r in run.of_type(RECORD) if r.plain_inputs()["name"] == "rtc.example.org"]) == 1


def test_disabled_parts_have_no_records(program: Any) -> None:
    raw = _raw(element_call={"enabled": False}, ntfy={"enabled": False}, element_web={"enabled": False})
    assert set(_records(program(raw, secret_keys=SECRET))) == {("example.org", "A")}


@pytest.mark.parametrize("raw, path", [
    (_raw(cloudflare={"origin_ip": None}), "cloudflare.origin_ip"),
    (_raw(cloudflare={"origin_ip": "2001:db8::1"}), "cloudflare.origin_ip"),
    (_raw(cloudflare={"proxy_http": True}, synapse={"max_upload_size": "200M"}), "synapse.max_upload_size"),
    (_raw(hostnames={"turn": "turn.example.net"}, coturn={"enabled": True}), "hostnames.turn"),
])
def test_bad_dns_configs_are_refused(raw: dict[str, Any], path: str) -> None:
    import stack

    with pytest.raises(config.ConfigError) as err:
        stack.parse(raw, SECRET)
    assert path in [p.path for p in err.value.problems], str(err.value)
