"""Bad stack configs: each is refused with a message naming the key path, the bad value and what
is allowed. All problems come at once, as a pulumi.RunError, and never show a secret's value."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest

from config import ConfigError, Problem
from config.model import StackConfig
from stack import parse

LOCAL: dict[str, Any] = {"server_name": "localhost"}
PUBLIC: dict[str, Any] = {"server_name": "example.org", "tls": {"acme_email": "ops@example.org"}}
SECRET_VALUE = "hunter2-Zq8xK3mP9vL"  # a secret value that must never be echoed


def with_(base: dict[str, Any], **keys: Any) -> dict[str, Any]:
    raw = copy.deepcopy(base)
    raw.update(keys)
    return raw


def hosts(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "docker", "hosts": list(entries)}


@dataclass(frozen=True)
class Bad:
    id: str
    raw: dict[str, Any]
    path: str  # the key path the problem is reported at
    allowed: tuple[str, ...]  # words of "what is allowed" that must be in the message
    value: str | None = None  # the bad value as shown after "(got ", when there is one
    secret_keys: tuple[str, ...] = ()
    extra_paths: tuple[str, ...] = field(default=())  # other problems the same config must report


CASES: list[Bad] = [
    Bad("missing-server-name", {}, "server_name", ("required",)),
    Bad("bad-hostname", {"server_name": "Matrix_Server!"}, "server_name", ("DNS hostname",), "'Matrix_Server!'"),
    Bad("hostname-trailing-dash", with_(LOCAL, hostnames={"call": "call-.localhost"}), "hostnames.call",
        ("DNS hostname",), "'call-.localhost'"),
    Bad("server-name-wrong-type", {"server_name": 42}, "server_name", ("text",), "42"),
    Bad("unknown-top-level-key", with_(LOCAL, synapse_workers=3), "synapse_workers",
        ("unknown key", "server_name", "synapse", "target", "cloudflare")),
    Bad("unknown-nested-key", with_(LOCAL, synapse={"worker": {"preset": "seed-000"}}), "synapse.worker",
        ("unknown key", "workers", "database", "extra_config", "admin_api_allowlist")),
    Bad("unknown-key-in-list-item",
        with_(LOCAL, target=hosts({"name": "a", "url": "unix:///var/run/docker.sock", "adress": "10.0.0.1"})),
        "target.hosts[0].adress", ("unknown key", "address", "name", "services", "ssh_opts", "url")),
    Bad("unknown-key-in-tagged-union",
        with_(LOCAL, synapse={"database": {"kind": "external", "host": "db", "pasword": "x"}},
              database_password="y"),
        "synapse.database.pasword", ("unknown key", "host", "sslmode", "user"),
        secret_keys=("database_password",)),
    Bad("bad-target-kind", with_(LOCAL, target={"kind": "nomad"}), "target.kind", ("'docker'", "'kubernetes'"),
        "'nomad'"),
    Bad("target-without-kind", with_(LOCAL, target={"http_port": 8080}), "target.kind",
        ("'docker'", "'kubernetes'")),
    Bad("external-database-without-kind", with_(LOCAL, synapse={"database": {"host": "db.example.org"}}),
        "synapse.database.host", ("unknown key", "cp_max", "image")),
    Bad("bad-database-kind", with_(LOCAL, synapse={"database": {"kind": "sqlite"}}), "synapse.database.kind",
        ("'bundled'", "'external'"), "'sqlite'"),
    Bad("bad-docker-url", with_(LOCAL, target=hosts({"name": "a", "url": "http://docker:2375"})),
        "target.hosts[0].url", ("unix:///", "ssh://", "tcp://"), "'http://docker:2375'"),
    Bad("bad-host-name", with_(LOCAL, target=hosts({"name": "Host_A", "url": "unix:///var/run/docker.sock"})),
        "target.hosts[0].name", ("lowercase letters",), "'Host_A'"),
    Bad("no-hosts", with_(LOCAL, target={"kind": "docker", "hosts": []}), "target.hosts", ("at least 1",), "[]"),
    Bad("duplicate-host-names",
        with_(LOCAL, target=hosts({"name": "box", "url": "unix:///a", "address": "10.0.0.1"},
                                  {"name": "box", "url": "ssh://root@b", "address": "10.0.0.2"})),
        "target.hosts", ("unique",), '["box"]'),
    Bad("several-hosts-without-address",
        with_(LOCAL, target=hosts({"name": "one", "url": "unix:///var/run/docker.sock"},
                                  {"name": "two", "url": "ssh://root@two"})),
        "target.hosts[0].address", ("required with several hosts", "one", "two")),
    Bad("image-latest", with_(LOCAL, synapse={"image": "matrixdotorg/synapse:latest"}), "synapse.image",
        ("not pinned", "version"), "'matrixdotorg/synapse:latest'"),
    Bad("image-no-tag", with_(LOCAL, ntfy={"image": "binwiederhier/ntfy"}), "ntfy.image",
        ("explicit tag or digest",), "'binwiederhier/ntfy'"),
    Bad("image-stable-tag", with_(LOCAL, element_call={"livekit": {"image": "livekit/livekit-server:stable"}}),
        "element_call.livekit.image", ("not pinned",), "'livekit/livekit-server:stable'"),
    Bad("bad-size", with_(LOCAL, synapse={"max_upload_size": "50MB"}), "synapse.max_upload_size",
        ("a size such as 50M or 2G",), "'50MB'"),
    Bad("port-too-high", with_(LOCAL, target={"kind": "docker", "http_port": 70000}), "target.http_port",
        ("at most 65535",), "70000"),
    Bad("port-zero", with_(LOCAL, synapse={"database": {"kind": "external", "host": "db", "port": 0}},
                           database_password="x"),
        "synapse.database.port", ("at least 1",), "0", secret_keys=("database_password",)),
    Bad("port-not-a-number", with_(LOCAL, target={"kind": "docker", "https_port": "https"}),
        "target.https_port", ("whole number",), "'https'"),
    Bad("negative-worker-count", with_(LOCAL, synapse={"workers": {"counts": {"generic": -1}}}),
        "synapse.workers.counts.generic", ("at least 0",), "-1"),
    Bad("too-many-workers", with_(LOCAL, synapse={"workers": {"counts": {"generic": 65}}}),
        "synapse.workers.counts.generic", ("at most 64",), "65"),
    Bad("unknown-worker-role", with_(LOCAL, synapse={"workers": {"counts": {"syncer": 2}}}),
        "synapse.workers.counts.syncer", ("unknown worker role", "generic", "sync", "event_persister"), "'syncer'"),
    Bad("unknown-preset", with_(LOCAL, synapse={"workers": {"preset": "huge"}}), "synapse.workers.preset",
        ("'monolith'", "'seed-000'"), "'huge'"),
    Bad("two-typing-writers", with_(LOCAL, synapse={"workers": {"counts": {"typing": 2}}}),
        "synapse.workers.counts.typing", ("at most 1", "single typing"), "2"),
    Bad("two-user-directory", with_(LOCAL, synapse={"workers": {"counts": {"user_directory": 2}}}),
        "synapse.workers.counts.user_directory", ("at most 1",), "2"),
    Bad("two-background", with_(LOCAL, synapse={"workers": {"counts": {"background": 3}}}),
        "synapse.workers.counts.background", ("at most 1",), "3"),
    Bad("two-presence", with_(LOCAL, synapse={"workers": {"preset": "seed-000", "counts": {"presence": 2}}}),
        "synapse.workers.counts.presence", ("at most 1",), "2"),
    Bad("two-appservice", with_(LOCAL, synapse={"workers": {"counts": {"appservice": 2}}}),
        "synapse.workers.counts.appservice", ("at most 1",), "2"),
    Bad("email-registration-without-smtp", with_(LOCAL, synapse={"registration": {"mode": "email"}}),
        "synapse.registration.mode", ("smtp",), "'email'"),
    Bad("bad-registration-mode", with_(LOCAL, synapse={"registration": {"mode": "open"}}),
        "synapse.registration.mode", ("'closed'", "'token'", "'email'"), "'open'"),
    Bad("smtp-without-from-address", with_(LOCAL, synapse={"smtp": {"host": "smtp.example.org"}}),
        "synapse.smtp.from_address", ("required",)),
    Bad("smtp-user-without-password",
        with_(LOCAL, synapse={"smtp": {"host": "smtp.example.org", "user": "matrix", "from_address": "m@x.org"}}),
        "smtp_password", ("required when synapse.smtp.user", "--secret")),
    Bad("plaintext-secret", with_(LOCAL, smtp_password=SECRET_VALUE), "smtp_password",
        ("must be a Pulumi secret", "--secret"), "[plaintext]"),
    Bad("plaintext-cloudflare-token", with_(LOCAL, cloudflare_api_token=SECRET_VALUE), "cloudflare_api_token",
        ("must be a Pulumi secret",), "[plaintext]"),
    Bad("external-db-without-password",
        with_(LOCAL, synapse={"database": {"kind": "external", "host": "db.internal"}}),
        "database_password", ("required with an external database", "--secret")),
    Bad("external-db-without-host", with_(LOCAL, synapse={"database": {"kind": "external"}}),
        "synapse.database.host", ("required",)),
    Bad("ldap-bind-dn-without-password",
        with_(LOCAL, synapse={"ldap": {"uri": "ldaps://ldap.example.org", "base": "dc=example,dc=org",
                                       "bind_dn": "cn=synapse,dc=example,dc=org"}}),
        "ldap_bind_password", ("required when synapse.ldap.bind_dn",)),
    Bad("ldap-bad-uri", with_(LOCAL, synapse={"ldap": {"uri": "http://ldap", "base": "dc=x"}}),
        "synapse.ldap.uri", ("ldaps?://",), "'http://ldap'"),
    Bad("cloudflare-without-zone",
        with_(PUBLIC, cloudflare={"enabled": True}, cloudflare_api_token="t"),
        "cloudflare.zone", ("required when cloudflare.enabled",), secret_keys=("cloudflare_api_token",)),
    Bad("cloudflare-without-token", with_(PUBLIC, cloudflare={"enabled": True, "zone": "example.org"}),
        "cloudflare_api_token", ("required when cloudflare.enabled", "--secret")),
    Bad("cloudflare-bad-account-id",
        with_(PUBLIC, cloudflare={"enabled": True, "zone": "example.org", "account_id": "XYZ"},
              cloudflare_api_token="t"),
        "cloudflare.account_id", ("[0-9a-f]{32}",), "'XYZ'", secret_keys=("cloudflare_api_token",)),
    Bad("pages-without-cloudflare",
        with_(PUBLIC, element_web={"mode": "pages", "source": {"owner": "o", "repo": "r"}}),
        "element_web.mode", ("cloudflare.enabled",), "'pages'", extra_paths=("cloudflare.account_id",)),
    Bad("pages-without-source",
        with_(PUBLIC, element_web={"mode": "pages"},
              cloudflare={"enabled": True, "zone": "example.org", "account_id": "0" * 32},
              cloudflare_api_token="t"),
        "element_web.source", ("owner", "repo"), secret_keys=("cloudflare_api_token",)),
    Bad("hostname-outside-zone",
        with_(PUBLIC, hostnames={"call": "call.elsewhere.net"},
              cloudflare={"enabled": True, "zone": "example.org"}, cloudflare_api_token="t"),
        "hostnames.call", ("inside the Cloudflare zone example.org",), "'call.elsewhere.net'",
        secret_keys=("cloudflare_api_token",)),
    Bad("acme-without-email", {"server_name": "example.org"}, "tls.acme_email", ("ACME",)),
    Bad("bad-tls-mode", with_(LOCAL, tls={"mode": "letsencrypt"}), "tls.mode",
        ("'none'", "'acme'", "'origin_ca'"), "'letsencrypt'"),
    Bad("bad-cidr", with_(LOCAL, synapse={"admin_api_allowlist": ["10.0.0.0/8", "10.0.0.0/33"]}),
        "synapse.admin_api_allowlist[1]", ("IP address or CIDR",), "'10.0.0.0/33'"),
    Bad("cidr-not-an-ip", with_(LOCAL, synapse={"admin_api_allowlist": ["office"]}),
        "synapse.admin_api_allowlist[0]", ("IP address or CIDR",), "'office'"),
    Bad("extra-config-instance-map", with_(LOCAL, synapse={"extra_config": {"instance_map": {}}}),
        "synapse.extra_config.instance_map", ("managed by the stack",)),
    Bad("extra-config-database", with_(LOCAL, synapse={"extra_config": {"database": {"name": "sqlite3"}}}),
        "synapse.extra_config.database", ("managed by the stack",)),
    Bad("extra-config-listeners", with_(LOCAL, synapse={"extra_config": {"listeners": []}}),
        "synapse.extra_config.listeners", ("managed by the stack",)),
    Bad("extra-config-worker-key", with_(LOCAL, synapse={"extra_config": {"worker_app": "x"}}),
        "synapse.extra_config.worker_app", ("managed by the stack",)),
    Bad("extra-config-server-name", with_(LOCAL, synapse={"extra_config": {"server_name": "evil.org"}}),
        "synapse.extra_config.server_name", ("managed by the stack",)),
    Bad("rate-limit-zero", with_(LOCAL, synapse={"rate_limits": {"message": {"per_second": 0, "burst_count": 10}}}),
        "synapse.rate_limits.message.per_second", ("greater than 0",), "0"),
    Bad("rate-limit-burst-zero",
        with_(LOCAL, synapse={"rate_limits": {"login_address": {"per_second": 1, "burst_count": 0}}}),
        "synapse.rate_limits.login_address.burst_count", ("at least 1",), "0"),
    Bad("livekit-udp-range-reversed",
        with_(LOCAL, element_call={"livekit": {"rtc_udp_port_start": 60000, "rtc_udp_port_end": 50000}}),
        "element_call.livekit.rtc_udp_port_end", ("must not be below rtc_udp_port_start", "60000"), "50000"),
    Bad("livekit-udp-range-too-wide",
        with_(LOCAL, element_call={"livekit": {"rtc_udp_port_start": 10000, "rtc_udp_port_end": 40000}}),
        "element_call.livekit.rtc_udp_port_end", ("at most 10000 ports",), "40000"),
    Bad("coturn-relay-range-reversed", with_(LOCAL, coturn={"relay_port_start": 50000, "relay_port_end": 49000}),
        "coturn.relay_port_end", ("must not be below relay_port_start",), "49000"),
    Bad("placement-unknown-service",
        with_(LOCAL, target=hosts({"name": "a", "url": "unix:///var/run/docker.sock", "services": ["synapse-mian"]})),
        "target.hosts[0].services", ("names no service", "synapse-main", "synapse-proxy"), "'synapse-mian'"),
    Bad("synapse-split-across-hosts",
        with_(LOCAL, target=hosts({"name": "a", "url": "unix:///var/run/docker.sock", "address": "10.0.0.1"},
                                  {"name": "b", "url": "ssh://root@b", "address": "10.0.0.2",
                                   "services": ["synapse-postgres"]})),
        "target.hosts", ("must be placed on one host", "synapse-main", "synapse-postgres"), '["a", "b"]'),
    Bad("protect-not-bool", with_(LOCAL, protect="maybe"), "protect", ("true or false",), "'maybe'"),
    Bad("block-not-a-mapping", with_(LOCAL, synapse="seed-000"), "synapse", ("mapping",), "'seed-000'"),
    Bad("list-not-a-list", with_(LOCAL, synapse={"federation": {"deny": "evil.org"}}), "synapse.federation.deny",
        ("list",), "'evil.org'"),
    Bad("bad-hostname-in-list", with_(LOCAL, synapse={"federation": {"deny": ["evil.org", "not a host"]}}),
        "synapse.federation.deny[1]", ("DNS hostname",), "'not a host'"),
    Bad("odd-key-is-quoted", with_(LOCAL, **{"work ers": 1}), '"work ers"', ("unknown key", "synapse")),
    Bad("blank-worker-role-is-quoted", with_(LOCAL, synapse={"workers": {"counts": {" ": 1}}}),
        'synapse.workers.counts." "', ("unknown worker role",), "' '"),
    Bad("cp-max-too-big", with_(LOCAL, synapse={"database": {"kind": "bundled", "cp_max": 500}}),
        "synapse.database.cp_max", ("at most 50",), "500"),
    Bad("monitoring-topic-not-an-ntfy-topic", with_(LOCAL, monitoring={"enabled": True, "ntfy_topic": "my alerts"}),
        "monitoring.ntfy_topic", ("an ntfy topic",), "'my alerts'"),
    Bad("monitoring-email-without-smtp",
        with_(LOCAL, monitoring={"enabled": True, "email": {"to": "ops@example.org"}}),
        "monitoring.email", ("synapse.smtp",), "'ops@example.org'"),
    Bad("monitoring-with-nowhere-to-send", with_(LOCAL, ntfy={"enabled": False}, monitoring={"enabled": True}),
        "monitoring.enabled", ("ntfy.enabled", "monitoring.email"), "true"),
]


def _problem_at(err: ConfigError, path: str) -> Problem:
    found = [p for p in err.problems if p.path == path]
    assert found, f"no problem at {path}; got:\n{err}"
    return found[0]


def test_the_cases_are_distinct() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    keys = [repr(sorted(c.raw.items())) + repr(c.secret_keys) for c in CASES]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_config_is_refused_with_path_value_and_what_is_allowed(case: Bad) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(case.raw, case.secret_keys)
    err = caught.value
    problem = _problem_at(err, case.path)
    line = str(problem)
    assert line.startswith(f"matrix-stack:{case.path}: ")
    for word in case.allowed:
        assert word in problem.message, f"{word!r} not in {line!r}"
    if case.value is None:
        assert "(got " not in line
    else:
        assert line.endswith(f"(got {case.value})"), line
    for path in case.extra_paths:
        _problem_at(err, path)
    text = str(err)
    assert text.startswith(f"the stack config has {len(err.problems)} problem(s):")
    assert f"  - {line}" in text.splitlines()
    assert "Traceback" not in text and "pydantic" not in text and "errors.pydantic.dev" not in text


def test_the_error_is_a_pulumi_run_error_so_the_cli_prints_no_traceback() -> None:
    with pytest.raises(pulumi.RunError):
        parse({})
    assert issubclass(ConfigError, pulumi.RunError)


def test_several_problems_are_reported_in_one_error() -> None:
    raw = {
        "server_name": "Not A Host",
        "smtp_password": SECRET_VALUE,
        "surprise": True,
        "target": {"kind": "docker", "http_port": 0},
        "synapse": {"image": "matrixdotorg/synapse:latest", "max_upload_size": "big",
                    "workers": {"counts": {"generic": -2}}},
        "element_call": {"livekit": {"rtc_udp_port_start": 60000, "rtc_udp_port_end": 50000}},
    }
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    paths = {p.path for p in caught.value.problems}
    assert paths == {
        "server_name", "smtp_password", "surprise", "target.http_port", "synapse.image",
        "synapse.max_upload_size", "synapse.workers.counts.generic", "element_call.livekit.rtc_udp_port_end",
    }
    text = str(caught.value)
    assert text.startswith("the stack config has 8 problem(s):")
    assert len(text.splitlines()) == 9


def test_cross_field_problems_are_reported_together() -> None:
    raw = with_(PUBLIC, synapse={"database": {"kind": "external", "host": "db"},
                                 "smtp": {"host": "smtp.example.org", "user": "u", "from_address": "m@x.org"},
                                 "extra_config": {"redis": {}, "stream_writers": {}}},
                cloudflare={"enabled": True})
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    paths = {p.path for p in caught.value.problems}
    assert {"database_password", "smtp_password", "cloudflare.zone", "cloudflare_api_token"} <= paths


def test_problems_are_sorted_and_unique() -> None:
    raw = with_(LOCAL, a=1, b=2, synapse={"workers": {"counts": {"typing": 2, "presence": 2}}})
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    problems = caught.value.problems
    assert problems == sorted(set(problems))


SECRET_PLACES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("plaintext", with_(LOCAL, smtp_password=SECRET_VALUE), ()),
    ("plaintext-all", with_(LOCAL, smtp_password=SECRET_VALUE, database_password=SECRET_VALUE,
                            cloudflare_api_token=SECRET_VALUE, ldap_bind_password=SECRET_VALUE), ()),
    ("secret-of-wrong-type", with_(LOCAL, database_password={"value": SECRET_VALUE}), ("database_password",)),
    ("secret-in-list", with_(LOCAL, ldap_bind_password=[SECRET_VALUE]), ("ldap_bind_password",)),
    ("secret-with-other-problems",
     with_(LOCAL, database_password=SECRET_VALUE, synapse={"database": {"kind": "external"}}, bogus=SECRET_VALUE[:3]),
     ("database_password",)),
    ("secret-with-cross-field-problems",
     with_(PUBLIC, cloudflare_api_token=SECRET_VALUE, cloudflare={"enabled": True, "zone": "other.org"}),
     ("cloudflare_api_token",)),
    ("plaintext-and-bad-type", with_(LOCAL, smtp_password=12345678901234567890), ()),
]


@pytest.mark.parametrize("raw,secret_keys", [(r, s) for _i, r, s in SECRET_PLACES],
                         ids=[i for i, _r, _s in SECRET_PLACES])
def test_no_message_shows_a_secret_value(raw: dict[str, Any], secret_keys: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(raw, secret_keys)
    text = str(caught.value) + "\n" + repr(caught.value) + "\n" + repr(caught.value.problems)
    assert SECRET_VALUE not in text
    assert "12345678901234567890" not in text
    for field_name in raw:
        if field_name.endswith(("_password", "_token")):
            assert any(p.path == field_name for p in caught.value.problems) or field_name in secret_keys


def test_a_secret_set_as_a_secret_is_accepted_and_kept_hidden() -> None:
    cfg = parse(with_(LOCAL, smtp_password=SECRET_VALUE,
                      synapse={"smtp": {"host": "smtp.example.org", "user": "u", "from_address": "m@x.org"}}),
                ["matrix-stack:smtp_password"])
    assert isinstance(cfg, StackConfig)
    assert cfg.smtp_password is not None and cfg.smtp_password.get_secret_value() == SECRET_VALUE
    assert SECRET_VALUE not in repr(cfg)


def test_the_valid_base_configs_parse() -> None:
    from tests.conftest import stack_raw

    for raw in (LOCAL, PUBLIC, stack_raw("dev")):
        assert isinstance(parse(raw), StackConfig)


def test_a_database_block_without_kind_is_the_bundled_database() -> None:
    cfg = parse(with_(LOCAL, synapse={"database": {"cp_max": 10}}))
    assert cfg.synapse.database.kind == "bundled"
    assert cfg.synapse.database.cp_max == 10


# A stack file with five mistakes in two parts: a misspelt key, two single-instance roles
# counted twice, an unknown role and a count over the limit.
FIVE_MISTAKES = """\
config:
  matrix-stack:server_name: localhost
  matrix-stack:ntfy:
    enable: false
  matrix-stack:synapse:
    workers:
      preset: seed-000
      counts:
        typing: 2
        presence: 2
        backgrounds: 1
        event_persister: 65
"""


def test_five_mistakes_in_two_parts_are_reported_in_one_run() -> None:
    import yaml

    document = yaml.safe_load(FIVE_MISTAKES)["config"]
    raw = {key.split(":", 1)[1]: value for key, value in document.items()}
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert [(p.path, p.value) for p in caught.value.problems] == [
        ("ntfy.enable", ""),
        ("synapse.workers.counts.backgrounds", "'backgrounds'"),
        ("synapse.workers.counts.event_persister", "65"),
        ("synapse.workers.counts.presence", "2"),
        ("synapse.workers.counts.typing", "2"),
    ]
    assert str(caught.value).startswith("the stack config has 5 problem(s):")


def test_a_block_rule_is_judged_even_when_another_field_of_the_block_is_refused() -> None:
    # pydantic skips a model's own rules once a field fails; the loader runs them on the rest.
    raw = with_(LOCAL, synapse={"image": "matrixdotorg/synapse:latest", "registration": {"mode": "email"}})
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert {p.path for p in caught.value.problems} == {"synapse.image", "synapse.registration.mode"}


def test_a_rule_is_skipped_only_when_its_own_input_is_invalid() -> None:
    raw = with_(PUBLIC,
                # Invalid smtp block: the "smtp_password required" rule cannot judge it...
                synapse={"smtp": {"host": "not a host", "user": "u", "from_address": "m@x.org"},
                         "extra_config": {"instance_map": {}}},
                # ...while the Cloudflare rules, the extra_config rule and placement still run.
                cloudflare={"enabled": True, "zone": "example.org"},
                target=hosts({"name": "a", "url": "unix:///var/run/docker.sock", "services": ["synapse-mian"]}),
                ntfy={"image": "binwiederhier/ntfy"})
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    paths = {p.path for p in caught.value.problems}
    assert paths == {"synapse.smtp.host", "cloudflare.origin_ip", "cloudflare_api_token",
                     "synapse.extra_config.instance_map", "target.hosts[0].services", "ntfy.image"}


def test_rules_over_the_topology_wait_for_a_worker_table_that_stands() -> None:
    # Placement derives the services from every count: with a count refused it does not judge
    # the host lists, while the worker table judges each count on its own.
    raw = with_(LOCAL, synapse={"workers": {"counts": {"typing": 2, "generic": -1, "sync": 1}}},
                target=hosts({"name": "a", "url": "unix:///var/run/docker.sock", "services": ["synapse-mian"]}))
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert {p.path for p in caught.value.problems} == {"synapse.workers.counts.typing",
                                                       "synapse.workers.counts.generic"}
    raw["synapse"]["workers"]["counts"] = {"typing": 1}
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert {p.path for p in caught.value.problems} == {"target.hosts[0].services"}


def test_a_misspelt_key_puts_its_block_in_doubt_for_the_rules_that_read_it() -> None:
    # `ntfy.enable: false` may have meant to turn ntfy off: placement, which needs to know
    # whether ntfy runs, does not judge the host lists; rules that do not read ntfy still run.
    raw = with_(LOCAL, ntfy={"enable": False}, synapse={"workers": {"counts": {"typing": 2}}},
                target=hosts({"name": "a", "url": "unix:///var/run/docker.sock", "services": ["ntfy"]}))
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert {p.path for p in caught.value.problems} == {"ntfy.enable", "synapse.workers.counts.typing"}


def test_schema_errors_everywhere_do_not_hide_the_worker_table() -> None:
    raw = {"server_name": "Not A Host", "surprise": 1, "target": {"kind": "nomad"},
           "synapse": {"image": "x", "workers": {"preset": "huge", "counts": {"generic": -1, "typing": 3}}}}
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert {p.path for p in caught.value.problems} == {
        "server_name", "surprise", "target.kind", "synapse.image", "synapse.workers.preset",
        "synapse.workers.counts.generic", "synapse.workers.counts.typing"}


def test_every_rule_reads_keys_the_config_has() -> None:
    """A misspelt key in a rule's reads would let it judge a default: each must name a field."""
    from components.checks import RULES as STACK_RULES
    from config.load import _models_in
    from config.rules import RULES

    rules = [*RULES, *STACK_RULES]
    assert len(rules) >= 10
    for rule in rules:
        assert rule.reads, rule.name
        for read in rule.reads:
            models: list[Any] = [StackConfig]
            for part in read.removesuffix(".*").split("."):
                fields = [m.model_fields[part] for m in models if part in m.model_fields]
                assert fields, f"{rule.name} reads {read}: no field {part!r}"
                models = [m for f in fields for m in _models_in(f.annotation)]


def test_the_config_alone_imports_no_part_and_the_stack_hands_in_its_rules() -> None:
    """config.parse (a fresh interpreter) runs the config's own rules and imports no component;
    stack.parse hands the loader the stack-wide rules too, and judges placement and the parts."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    probe = ("import sys, config\n"
             "raw = {'server_name': 'localhost', 'target': {'kind': 'docker', 'hosts': [\n"
             "    {'name': 'a', 'url': 'unix:///var/run/docker.sock', 'services': ['synapse-mian']}]}}\n"
             "config.parse(raw)\n"
             "print(sorted(m for m in sys.modules if m == 'stack' or m.startswith('components')))\n"
             "import stack\n"
             "try:\n"
             "    stack.parse(raw)\n"
             "except config.ConfigError as e:\n"
             "    print(e)\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[]\n"), done.stdout
    assert "target.hosts[0].services" in done.stdout and "synapse-mian" in done.stdout
