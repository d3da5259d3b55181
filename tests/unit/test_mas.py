"""The Matrix Authentication Service: its rendered config against MAS's own published schema for
the pinned version, its typed settings and their errors, and Synapse's and the proxy's side."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from components import postgres
from components.mas import render
from components.mas import services as mas_services
from components.postgres import render as postgres_render
from components.synapse import homeserver as hs
from components.view import StackView
from config import images
from config.load import ConfigError
from config.model import StackConfig
from stack import parse
from tests.conftest import ROOT, max_connections, nginx_conf, stack_config, stack_view

SCHEMA_PATH = ROOT.parent / "shared" / "reference" / "mas" / f"config.schema.v{images.MAS_VERSION}.json"


def closed(schema: Any) -> Any:
    """MAS's schema with every object closed to the properties it names. MAS itself ignores a key
    it does not know (its config structs do not deny unknown fields), so the published schema
    leaves objects open and a misspelt key would pass it; closed, it fails."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    published = json.loads(Path(SCHEMA_PATH).read_text())
    return closed(published)


def validate(schema: dict[str, Any], document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document))


TLS = {"acme_email": "ops@example.org"}
MONOLITH: dict[str, Any] = {"server_name": "example.org", "tls": TLS, "mas": {"enabled": True}}
WORKERS: dict[str, Any] = {**MONOLITH, "synapse": {"workers": {"preset": "seed-000"}}}
EVERY_SETTING: dict[str, Any] = {
    "server_name": "example.org",
    "tls": TLS,
    "hostnames": {"auth": "login.example.org"},
    "synapse": {
        "registration": {"mode": "token"},
        "smtp": {"host": "smtp.example.org", "port": 465, "user": "matrix", "from_address": "Matrix <m@example.org>",
                 "force_tls": True},
    },
    "mas": {
        "enabled": True,
        "passwords": True,
        "import_synapse_passwords": True,
        "database": {"kind": "external", "host": "db.example.org", "port": 5433, "name": "auth", "user": "auth",
                     "sslmode": "verify-full"},
        "upstream_oauth2": [
            {"name": "google", "issuer": "https://accounts.google.com", "client_id": "g-client",
             "human_name": "Google", "brand_name": "google", "scopes": ["openid", "email", "profile"],
             "token_endpoint_auth_method": "client_secret_post", "synapse_idp_id": "oidc-google",
             "claims": {"subject": "{{ user.sub }}",
                        "localpart": {"action": "require", "template": "{{ user.email.split('@')[0] }}"},
                        "displayname": {"action": "force", "template": "{{ user.name }}"},
                        "email": {"action": "force"}, "skip_confirmation": True}},
            {"name": "dex", "issuer": "https://dex.example.org", "client_id": "mas", "id": "01JSHPZHAXC50QBKH67MH33TNF",
             "token_endpoint_auth_method": "none"},
        ],
    },
    "smtp_password": "stand-in",
    "mas_database_password": "stand-in",
    "mas_client_secrets": {"google": "stand-in"},
}
SECRET_KEYS = ("smtp_password", "mas_database_password", "mas_client_secrets")
SYN2MAS: dict[str, Any] = {**MONOLITH, "mas": {"enabled": True, "syn2mas": True, "import_synapse_passwords": True}}

STACKS = {"monolith": MONOLITH, "workers": WORKERS, "every-setting": EVERY_SETTING, "syn2mas": SYN2MAS}


def example(name: str) -> StackConfig:
    raw, secret = stack_config(name, ROOT)
    return parse(raw, tuple(secret))


def cfg_of(raw: dict[str, Any]) -> StackConfig:
    return parse(copy.deepcopy(raw), SECRET_KEYS)


def _with_view(cfg: StackConfig) -> tuple[StackConfig, StackView]:
    return cfg, stack_view(cfg)


# ---------------------------------------------------------------- MAS's own schema


@pytest.mark.parametrize("name", sorted(STACKS))
def test_every_rendered_config_validates_against_mas_schema(schema: dict[str, Any], name: str) -> None:
    document = yaml.safe_load(render.config_yaml(*_with_view(cfg_of(STACKS[name]))))
    assert validate(schema, document) == []


@pytest.mark.parametrize("name", ["staging", "prod"])
def test_the_example_stacks_enable_mas_and_their_config_validates(schema: dict[str, Any], name: str) -> None:
    cfg = example(name)
    assert cfg.mas.enabled
    assert validate(schema, yaml.safe_load(render.config_yaml(*_with_view(cfg)))) == []


def test_the_every_setting_stack_uses_every_typed_setting() -> None:
    conf = render.config(*_with_view(cfg_of(EVERY_SETTING)))
    google, dex = conf["upstream_oauth2"]["providers"]
    assert conf["http"]["public_base"] == "https://login.example.org/"
    assert conf["database"] == {"host": "db.example.org", "port": 5433, "username": "auth", "database": "auth",
                                "ssl_mode": "verify-full", "password_file": render.DATABASE_PASSWORD_FILE,
                                "max_connections": render.DATABASE_POOL}
    assert conf["email"]["mode"] == "tls" and conf["email"]["password_file"] == render.SMTP_PASSWORD_FILE
    assert conf["account"]["password_registration_token_required"] is True
    assert [s["algorithm"] for s in conf["passwords"]["schemes"]] == ["bcrypt", "argon2id"]
    assert google["client_secret_file"] == "/secrets/upstream/google" and google["scope"] == "openid email profile"
    assert google["claims_imports"]["localpart"] == {"action": "require", "template": "{{ user.email.split('@')[0] }}"}
    assert google["registration_token_required"] is True and google["synapse_idp_id"] == "oidc-google"
    assert dex["id"] == "01JSHPZHAXC50QBKH67MH33TNF" and "client_secret_file" not in dex


def test_a_misspelt_key_fails_the_closed_schema_but_not_the_published_one(schema: dict[str, Any]) -> None:
    document = yaml.safe_load(render.config_yaml(*_with_view(cfg_of(EVERY_SETTING))))
    document["database"]["pasword_file"] = document["database"].pop("password_file")
    document["upstream_oauth2"]["providers"][0]["claims_imports"]["localpart"]["acton"] = "require"
    problems = validate(schema, document)
    assert any("'pasword_file' was unexpected" in p for p in problems), problems
    assert any("'acton' was unexpected" in p for p in problems), problems
    # MAS's published schema is open: it would have let the typo through, as MAS itself does.
    assert validate(json.loads(Path(SCHEMA_PATH).read_text()), document) == []


def test_the_metrics_listener_and_exporter_are_what_the_schema_names(schema: dict[str, Any]) -> None:
    document = yaml.safe_load(render.config_yaml(*_with_view(cfg_of(MONOLITH))))
    assert document["telemetry"] == {"metrics": {"exporter": "prometheus"}}
    [metrics] = [li for li in document["http"]["listeners"] if li["name"] == "metrics"]
    assert metrics == {"name": "metrics", "resources": [{"name": "prometheus"}],
                       "binds": [{"host": "0.0.0.0", "port": render.METRICS_PORT}]}
    assert validate(schema, document) == []
    # The schema judges both: an exporter or a resource MAS does not know fails it.
    document["telemetry"]["metrics"]["exporter"] = "prometheus-text"
    metrics["resources"] = [{"name": "metrics"}]
    problems = validate(schema, document)
    assert any(p.startswith("telemetry/metrics/exporter") for p in problems), problems
    assert any(p.startswith("http/listeners/2/resources/0") for p in problems), problems


def test_a_wrong_value_fails_the_schema(schema: dict[str, Any]) -> None:
    document = yaml.safe_load(render.config_yaml(*_with_view(cfg_of(EVERY_SETTING))))
    document["email"]["mode"] = "ssl"
    document["upstream_oauth2"]["providers"][0]["id"] = "not-a-ulid"
    problems = validate(schema, document)
    assert any(p.startswith("email/mode") for p in problems) and any("providers/0/id" in p for p in problems)


def test_no_secret_is_inline() -> None:
    text = render.config_yaml(*_with_view(cfg_of(EVERY_SETTING)))
    conf = yaml.safe_load(text)
    assert "stand-in" not in text
    assert set(conf["secrets"]) == {"encryption_file", "keys"}
    assert all(set(k) == {"kid", "key_file"} for k in conf["secrets"]["keys"])
    assert set(conf["matrix"]) == {"kind", "homeserver", "endpoint", "secret_file"}


def test_provider_ids_are_stable_ulids() -> None:
    cfg = cfg_of(EVERY_SETTING)
    google = cfg.mas.upstream_oauth2[0]
    first = render.provider_id(cfg, google)
    assert first == render.provider_id(cfg_of(EVERY_SETTING), google)
    assert re.fullmatch(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", first)
    other = cfg_of({**EVERY_SETTING, "server_name": "example.net", "tls": TLS})
    assert render.provider_id(other, other.mas.upstream_oauth2[0]) != first


def test_registration_policy_maps_from_the_stacks() -> None:
    def account(mode: str, **synapse: Any) -> dict[str, Any]:
        raw = {**MONOLITH, "synapse": {"registration": {"mode": mode}, **synapse}}
        return render.config(*_with_view(cfg_of(raw)))["account"]

    smtp = {"smtp": {"host": "smtp.example.org", "from_address": "m@example.org"}}
    assert account("closed")["password_registration_enabled"] is False
    assert account("token")["password_registration_token_required"] is True
    email = account("email", **smtp)
    assert email["password_registration_enabled"] and email["password_registration_email_required"]
    assert email["password_recovery_enabled"] and email["email_change_allowed"]
    # While migrating, nobody registers in MAS: syn2mas imports into an empty database.
    migrating = {**SYN2MAS, "synapse": {"registration": {"mode": "token"}}}
    assert render.config(*_with_view(cfg_of(migrating)))["account"]["password_registration_enabled"] is False


# ---------------------------------------------------------------- bad input


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(copy.deepcopy(raw), SECRET_KEYS)
    return [str(p) for p in caught.value.problems]


def test_synapse_password_settings_that_contradict_mas_are_refused() -> None:
    raw = {**MONOLITH, "synapse": {"ldap": {"uri": "ldaps://ldap.example.org", "base": "dc=example,dc=org"},
                                   "extra_config": {"password_config": {"enabled": True}, "oidc_providers": []}}}
    found = problems_of(raw)
    assert any(p.startswith("matrix-stack:synapse.ldap: must be unset with mas.enabled") for p in found), found
    assert any(p.startswith("matrix-stack:synapse.extra_config.password_config: contradicts mas.enabled")
               for p in found), found
    assert any(p.startswith("matrix-stack:synapse.extra_config.oidc_providers:") for p in found), found
    # Synapse's own logins are fine while MAS is off.
    legacy = {"ldap": raw["synapse"]["ldap"], "extra_config": {"oidc_providers": []}}
    parse({**MONOLITH, "synapse": legacy, "mas": {"enabled": False}}, SECRET_KEYS)


def test_a_provider_without_issuer_or_client_id_is_refused() -> None:
    raw = {**MONOLITH, "mas": {"enabled": True, "upstream_oauth2": [{"name": "corp", "token_endpoint_auth_method": "none"}]}}
    found = problems_of(raw)
    assert any(p.startswith("matrix-stack:mas.upstream_oauth2[0].issuer: required for provider 'corp'") for p in found)
    assert any(p.startswith("matrix-stack:mas.upstream_oauth2[0].client_id: required") for p in found)


def test_a_provider_secret_must_be_a_pulumi_secret_and_name_a_provider() -> None:
    raw = {**MONOLITH, "mas": {"enabled": True, "upstream_oauth2": [
        {"name": "corp", "issuer": "https://idp.example.org", "client_id": "x"}]},
        "mas_client_secrets": {"crop": "s"}}
    with pytest.raises(ConfigError) as caught:
        parse(raw, ())
    found = [str(p) for p in caught.value.problems]
    assert "matrix-stack:mas_client_secrets: must be a Pulumi secret" in found[-1] or any(
        "must be a Pulumi secret" in p for p in found)
    assert any("needs an entry 'corp'" in p for p in found) and any("names 'crop'" in p for p in found)


def test_mas_on_another_docker_host_than_its_bundled_database_is_refused() -> None:
    hosts = [{"name": "db", "url": "ssh://db.example.org", "address": "10.0.0.1"},
             {"name": "edge", "url": "ssh://edge.example.org", "address": "10.0.0.2", "services": ["mas*"]}]
    found = problems_of({**MONOLITH, "target": {"kind": "docker", "hosts": hosts}})
    # PostgreSQL listens on its host's private network only: MAS and its setup share its host.
    [placed] = [p for p in found if p.startswith("matrix-stack:target.hosts: ")]
    assert "mas, synapse-main, synapse-pgbouncer, synapse-postgres, synapse-postgres-setup" in placed
    assert "must be placed on one host" in placed
    # With an external MAS database MAS may run anywhere.
    external = {**MONOLITH, "target": {"kind": "docker", "hosts": hosts}, "mas_database_password": "x",
                "mas": {"enabled": True, "database": {"kind": "external", "host": "db.example.org"}}}
    parse(external, SECRET_KEYS)


def test_syn2mas_needs_synapse_hashes_and_bundled_databases() -> None:
    found = problems_of({**MONOLITH, "mas": {"enabled": True, "syn2mas": True}})
    assert any(p.startswith("matrix-stack:mas.import_synapse_passwords: must be true with mas.syn2mas") for p in found)


# ---------------------------------------------------------------- Synapse and the proxy


def test_synapse_delegates_to_mas_and_enables_qr_login() -> None:
    cfg = cfg_of(WORKERS)
    shared = hs.shared_config(cfg, {n: n for n in hs._all_names(cfg)}, render.homeserver(cfg),
                              server=stack_view(cfg).database_server)
    assert shared["matrix_authentication_service"] == {
        "enabled": True, "endpoint": "http://mas:8080/", "secret_path": "/secrets/mas_shared_secret"}
    assert shared["experimental_features"]["msc4108_enabled"] is True
    assert shared["enable_registration"] is False and shared["password_config"] == {"enabled": False}
    assert "registration_requires_token" not in shared
    # In migration mode Synapse keeps its own logins.
    legacy = hs.registration_keys(cfg_of({**SYN2MAS, "synapse": {"registration": {"mode": "token"}}}))
    assert legacy["enable_registration"] is True and "password_config" not in legacy


def test_login_logout_and_refresh_go_to_mas_before_any_synapse_route() -> None:
    cfg = cfg_of(WORKERS)
    conf = nginx_conf(cfg)
    locations = re.findall(r"^\s*location (?:~\*? )?(\S+) \{", conf, re.M)
    first_route = next(i for i, pattern in enumerate(locations) if pattern.startswith("^"))
    assert locations[first_route] == render.COMPAT_PATTERN
    block = conf.split(f"location ~ {render.COMPAT_PATTERN} {{", 1)[1].split("}", 1)[0]
    assert "proxy_pass http://mas:8080;" in block and "set $synapse_route mas;" in block
    pattern = re.compile(render.COMPAT_PATTERN)
    for path in ("/_matrix/client/v3/login", "/_matrix/client/r0/logout/all", "/_matrix/client/v3/refresh"):
        assert pattern.match(path), path
    assert not pattern.match("/_matrix/client/v3/sync")
    # Without MAS (or while migrating) Synapse keeps them.
    plain = nginx_conf(cfg_of({**WORKERS, "mas": {"enabled": False}}))
    assert render.COMPAT_PATTERN not in plain


def test_the_bundled_database_counts_mas_pool() -> None:
    view = stack_view(cfg_of(MONOLITH))
    mas = next(claim for claim in view.databases if claim.user == render.DATABASE_USER)
    assert mas.pool == render.DATABASE_POOL and mas.bundled and not mas.reads_all_data
    plain = stack_view(cfg_of({**MONOLITH, "mas": {"enabled": False}}))
    assert sum(c.pool for c in view.databases) == sum(c.pool for c in plain.databases) + render.DATABASE_POOL
    assert max_connections(cfg_of(MONOLITH)) >= 5 + 20 + render.DATABASE_POOL


# ---------------------------------------------------------------- services


def stand_ins(cfg: StackConfig) -> dict[str, str]:
    return {name: f"<{name}>" for name in mas_services.secret_names(cfg)}


def test_services_carry_every_secret_as_a_file_or_secret_env() -> None:
    cfg = cfg_of(EVERY_SETTING)
    [mas] = mas_services.services(cfg, stack_view(cfg), stand_ins(cfg))
    paths = {f.path: f for f in mas.files}
    assert mas.env == {"MAS_CONFIG": render.CONFIG} and render.CONFIG in paths
    assert not paths[render.CONFIG].secret
    secret_paths = {f.path for f in mas.files if f.secret}
    assert secret_paths == {render.ENCRYPTION_FILE, *render.SIGNING_KEYS.values(), render.MATRIX_SECRET_FILE,
                            render.DATABASE_PASSWORD_FILE, render.SMTP_PASSWORD_FILE, "/secrets/upstream/google"}
    assert mas.init_args == ("/usr/local/bin/mas-cli", "config", "check")
    assert mas.health is not None and (mas.health.http_path, mas.health.http_port) == ("/health", render.HEALTH_PORT)
    assert mas.user == images.facts_for(images.MAS).user


def test_the_bundled_database_gets_a_setup_service_with_the_superuser_password() -> None:
    cfg = cfg_of(MONOLITH)
    claims = [claim for claim in stack_view(cfg).databases if claim.bundled]
    server, _pooler, setup = postgres.services(cfg, claims, {"postgres": "<postgres>", "mas_database": "<database>"})
    assert setup.name == postgres.SETUP_SERVICE
    assert not setup.secret_env and setup.env == {"PGPASSFILE": "/tmp/pgpass"}
    files = {f.path: f.content for f in setup.files}
    assert files[postgres_render.SETUP_PGPASS] == ("synapse-postgres:5432:*:synapse:<postgres>\n"
                                                   "synapse-postgres:5432:mas:mas:<database>\n")
    assert files["/secrets/mas-password"] == "<database>"
    assert server.env["POSTGRES_PASSWORD_FILE"] == postgres_render.SUPERUSER_PASSWORD_FILE
    assert {f.path: f.content for f in server.files} == {postgres_render.SUPERUSER_PASSWORD_FILE: "<postgres>"}
    assert "pg_read_all_data FROM mas" in setup.files[0].content  # type: ignore[operator]
    migrating = [claim for claim in stack_view(cfg_of(SYN2MAS)).databases if claim.bundled]
    assert "GRANT pg_read_all_data TO mas" in postgres_render.setup_sql([c for c in migrating if not c.owner])


def test_operator_commands_name_the_target() -> None:
    docker = cfg_of(MONOLITH)
    assert render.create_admin_command(docker) == "docker exec -it mas mas-cli manage register-user --admin admin"
    k8s = cfg_of({**MONOLITH, "target": {"kind": "kubernetes", "namespace": "chat", "cert_manager_issuer": "le"}})
    assert render.create_admin_command(k8s) == (
        "kubectl -n chat exec -it deployment/mas -- mas-cli manage register-user --admin admin")
    steps = render.syn2mas_commands(k8s, stack_view(k8s))
    assert [s.split("\n", 1)[0][:5] for s in steps] == ["# 1. ", "# 2. ", "# 3. ", "# 4. ", "# 5. "]
    assert "kubectl -n chat scale deployment,statefulset -l matrix-stack.synapse-role --replicas=0" in steps[3]
    assert "kubectl -n chat exec statefulset/synapse-postgres -- pg_dump" in steps[3]
    assert steps[3].index("scale") < steps[3].index("pg_dump") < steps[3].index("syn2mas migrate")
    assert "docker stop $(for s in synapse-main; do docker ps -aq --filter label=matrix-stack.service=$s; done)" \
        in render.syn2mas_commands(docker, stack_view(docker))[3]


# ---------------------------------------------------------------- the part, in the whole program

CLOUDFLARE = {"enabled": True, "zone": "example.org", "account_id": "0" * 32, "origin_ip": "192.0.2.20"}


def test_one_registration_gives_mas_its_site_record_certificate_and_ingress_host(program: Any) -> None:
    docker = program({**MONOLITH, "cloudflare": CLOUDFLARE, "cloudflare_api_token": "t", "tls": {"mode": "origin_ca"}},
                     secret_keys=("cloudflare_api_token",))
    proxy = next(e for e in docker.services if e["service"].name == "synapse-proxy")
    nginx = next(f["content"] for f in proxy["files"] if f["path"].endswith("nginx.conf"))
    assert "server_name login.example.org;" not in nginx and "server_name auth.example.org;" in nginx
    assert "auth.example.org" in docker.deployment.outputs["dns_records"]
    certificates = [r.plain_inputs()["hostnames"] for r in docker.of_type(
        "cloudflare:index/originCaCertificate:OriginCaCertificate")]
    assert any("auth.example.org" in hosts for hosts in certificates), certificates
    k8s = program({**MONOLITH, "target": {"kind": "kubernetes", "cert_manager_issuer": "le"}})
    hosts = [rule["host"] for obj in k8s.deployment.manifests.values() if obj["kind"] == "Ingress"
             for rule in obj["spec"]["rules"]]
    assert "auth.example.org" in hosts
    assert {"deployment-mas", "service-mas", "networkpolicy-mas", "deployment-synapse-postgres-setup"} <= set(
        k8s.deployment.manifests)


def test_the_program_wires_synapse_mas_and_the_bundled_database(program: Any) -> None:
    run = program(WORKERS)
    services = {e["service"].name: e for e in run.services}
    assert {"mas", "synapse-postgres-setup"} <= set(services)
    main_files = {f["path"]: f for f in services["synapse-main"]["files"]}
    mas_files = {f["path"]: f for f in services["mas"]["files"]}
    # One shared secret, a file on both sides.
    assert main_files[render.SYNAPSE_SECRET_PATH]["content"] == mas_files[render.MATRIX_SECRET_FILE]["content"]
    shared = yaml.safe_load(main_files[hs.SHARED_CONFIG]["content"])
    assert shared["matrix_authentication_service"]["enabled"] is True
    # The database setup uses the cluster's superuser password and MAS's own.
    setup_files = {f["path"]: f for f in services["synapse-postgres-setup"]["files"]}
    postgres_files = {f["path"]: f for f in services["synapse-postgres"]["files"]}
    superuser = postgres_files[postgres_render.SUPERUSER_PASSWORD_FILE]
    assert superuser["secret"] and f":synapse:{superuser['content']}\n" in setup_files[postgres_render.SETUP_PGPASS]["content"]
    assert setup_files["/secrets/mas-password"]["content"] == mas_files[render.DATABASE_PASSWORD_FILE]["content"]
    assert services["synapse-postgres"]["service"].allowed_clients is not None
    assert {"mas", "synapse-postgres-setup"} <= set(services["synapse-postgres"]["service"].allowed_clients)
    assert run.deployment.outputs["create_admin_command"] == run.deployment.outputs["mas_create_admin_command"]
