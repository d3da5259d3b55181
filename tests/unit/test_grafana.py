"""Grafana: its dashboards through grafana-foundation-sdk's own models, derived from the declared
metrics targets and the alert table; its provisioning files against the keys Grafana's
provisioning reads; its secrets as files; its logins through MAS (MAS's schema); its hardening.
Grafana itself is in no registry here."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pulumi
import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from components.mas import render as mas_render
from components.monitoring import alerts as alert_table
from components.monitoring import dashboards, grafana
from config.load import ConfigError
from render import offline
from stack import parse
from tests.conftest import ROOT, stack_config, stack_raw, stack_view
from tests.unit.test_mas import closed, validate

SECRET_KEYS = ("backup_sftp_private_key", "cloudflare_api_token")
# The keys Grafana's provisioning reads (apiVersion 1): data sources from the yaml tags of
# upsertDataSourceFromConfigV1 (pkg/services/provisioning/datasources/types.go, stored version
# 01c8342349), dashboard providers from Grafana's provisioning docs (providers: name, orgId,
# folder, folderUid, type, disableDeletion, updateIntervalSeconds, allowUiUpdates, options.path,
# options.foldersFromFilesStructure).
DATASOURCE_KEYS = {"orgId", "orgName", "version", "name", "type", "access", "url", "user", "database", "basicAuth",
                   "basicAuthUser", "withCredentials", "isDefault", "correlations", "jsonData", "secureJsonData",
                   "editable", "uid"}
PROVIDER_KEYS = {"name", "orgId", "folder", "folderUid", "type", "disableDeletion", "updateIntervalSeconds",
                 "allowUiUpdates", "options"}
PROVIDER_OPTIONS = {"path", "foldersFromFilesStructure"}


def _raw(base: str = "staging", **grafana_keys: Any) -> dict[str, Any]:
    raw = copy.deepcopy(stack_raw(base))
    raw.setdefault("monitoring", {})["enabled"] = True
    raw["monitoring"]["grafana"] = {"enabled": True, **grafana_keys}
    return raw


def _cfg(raw: dict[str, Any], base: str = "staging") -> Any:
    _r, secret = stack_config(base, ROOT)
    return parse(raw, tuple(secret))


def _entry(run: Any, name: str) -> dict[str, Any]:
    return next(s for s in run.services if s["service"].name == name)


def _files(run: Any) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in _entry(run, grafana.SERVICE)["files"]}


@pytest.fixture(scope="module")
def staging_run() -> Any:
    """The staging example with Grafana on (and MAS, as staging has it), run once under mocks."""
    return offline.run(_raw(), stack="test", secret_keys=SECRET_KEYS)


@pytest.fixture(scope="module")
def staging() -> Any:
    cfg = _cfg(_raw())
    view = stack_view(cfg)
    return cfg, view, dashboards.dashboards(view.metrics_targets, alert_table.stack_alerts(view.metrics_targets))


def test_every_dashboard_reads_back_through_the_sdks_models(staging: Any) -> None:
    _c, _view, files = staging
    assert set(files) == {"matrix-stack-overview.json", "matrix-stack-synapse.json",
                          "matrix-stack-federation.json", "matrix-stack-edge.json", "matrix-stack-calls.json"}
    for name, text in files.items():
        model = json.loads(text)
        again = json.loads(JSONEncoder(sort_keys=True).encode(Dashboard.from_json(model)))
        assert again == model, name
        assert model["uid"] == name.removesuffix(".json") and model["title"]
        for panel in model["panels"]:
            assert panel["type"] in {"row", "stat", "timeseries", "alertlist"}, panel["type"]
            for target in panel.get("targets") or []:
                assert target["datasource"] == {"type": "prometheus", "uid": "prometheus"}


def test_panels_never_overlap(staging: Any) -> None:
    for name, text in staging[2].items():
        taken: set[tuple[int, int]] = set()
        for panel in json.loads(text)["panels"]:
            pos = panel["gridPos"]
            cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not cells & taken, (name, panel["title"])
            assert pos["x"] + pos["w"] <= 24
            taken |= cells


def test_synapse_has_a_row_per_role_of_the_worker_table(staging: Any) -> None:
    _c, view, files = staging
    roles = alert_table.roles(view.metrics_targets)
    model = json.loads(files["matrix-stack-synapse.json"])
    rows = [p["title"] for p in model["panels"] if p["type"] == "row"]
    assert rows == ["Alerts", *(f"{role} ({len(members)})" for role, members in roles.items()), "Alert list"]
    # Every role's selector names the role its targets carry.
    exprs = " ".join(expr for _t, expr in dashboards.queries(model))
    for role in roles:
        assert f'role="{role}"' in exprs
    # A monolith has one role: main.
    mono = _cfg(_raw("staging") | {"synapse": {**stack_raw("staging")["synapse"], "workers": {}}})
    mono_roles = alert_table.roles(stack_view(mono).metrics_targets)
    assert list(mono_roles) == ["main"]


def test_each_dashboard_counts_lists_and_links_its_alerts(staging: Any) -> None:
    _c, view, files = staging
    names = {a.name for a in alert_table.stack_alerts(view.metrics_targets)}
    for name, text in files.items():
        model = json.loads(text)
        [link] = model["links"]
        assert link["url"] == "/alerting/list?search=datasource%3APrometheus"
        panels = {p["title"]: p for p in model["panels"]}
        firing = panels["Firing alerts"]["targets"][0]["expr"]
        assert firing.startswith('count(ALERTS{alertstate="firing",alertname=~"') and firing.endswith(" or vector(0)")
        listed = set(firing.split('alertname=~"')[1].split('"')[0].split("|"))
        assert listed and listed <= names, name
        assert panels["Alerts"]["type"] == "alertlist"
        if name == "matrix-stack-overview.json":
            assert listed == names


def test_provisioning_files_use_only_keys_grafana_reads(staging_run: Any) -> None:
    run = staging_run
    files = _files(run)
    sources = yaml.safe_load(files[grafana.DATASOURCES_FILE]["content"])
    assert sources["apiVersion"] == 1
    [source] = sources["datasources"]
    assert set(source) <= DATASOURCE_KEYS
    assert source["uid"] == dashboards.DATASOURCE.uid and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(files[grafana.DASHBOARD_PROVIDER_FILE]["content"])
    [provider] = providers["providers"]
    assert set(provider) <= PROVIDER_KEYS and set(provider["options"]) <= PROVIDER_OPTIONS
    shipped = {path.rsplit("/", 1)[1] for path in files if path.startswith(provider["options"]["path"] + "/")}
    assert shipped == {"matrix-stack-overview.json", "matrix-stack-synapse.json", "matrix-stack-federation.json",
                       "matrix-stack-edge.json", "matrix-stack-calls.json"}


def _ini(text: str) -> dict[str, dict[str, str]]:
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return {s: dict(parser[s]) for s in parser.sections()}


def test_secrets_reach_grafana_as_files_and_the_admin_password_is_a_secret_output(staging_run: Any) -> None:
    run = staging_run
    service = _entry(run, grafana.SERVICE)["service"]
    files = _files(run)
    ini = _ini(files[grafana.CONFIG]["content"])
    assert ini["security"]["admin_password"] == f"$__file{{{grafana.ADMIN_PASSWORD_FILE}}}"
    assert ini["security"]["secret_key"] == f"$__file{{{grafana.SECRET_KEY_FILE}}}"
    for path in (grafana.ADMIN_PASSWORD_FILE, grafana.SECRET_KEY_FILE, grafana.OAUTH_SECRET_FILE):
        assert files[path]["secret"] and files[path]["mode"] == 0o400
    assert not service.env and not service.secret_env
    for path, f in files.items():
        if not f["secret"]:
            assert "$__file{" in f["content"] or "password" not in f["content"].split("admin_password")[0], path
    password = run.deployment.outputs["grafana_admin_password"]
    assert isinstance(password, pulumi.Output)
    loop = asyncio.new_event_loop()
    try:
        value = loop.run_until_complete(password.future())
        assert loop.run_until_complete(password.is_secret())
    finally:
        loop.close()
    assert files[grafana.ADMIN_PASSWORD_FILE]["content"] == value
    assert run.deployment.outputs["grafana_url"] == "https://grafana.example.org"


def test_with_mas_grafana_logs_in_as_mas_client_and_mas_config_validates(staging_run: Any) -> None:
    from tests.unit.test_mas import SCHEMA_PATH

    run = staging_run
    assert run.cfg.mas.enabled
    ini = _ini(_files(run)[grafana.CONFIG]["content"])
    oauth = ini["auth.generic_oauth"]
    assert oauth["client_id"] == grafana.CLIENT_ID
    assert oauth["client_secret"] == f"$__file{{{grafana.OAUTH_SECRET_FILE}}}"
    assert oauth["auth_url"] == "https://auth.example.org/authorize"
    assert oauth["token_url"] == "http://mas:8080/oauth2/token"
    mas_files = {f["path"]: f for f in _entry(run, mas_render.SERVICE)["files"]}
    conf = yaml.safe_load(mas_files[mas_render.CONFIG]["content"])
    [client] = conf["clients"]
    assert client["client_id"] == grafana.CLIENT_ID
    assert client["redirect_uris"] == ["https://grafana.example.org/login/generic_oauth"]
    # The same generated secret on both sides, a file on each.
    secret = mas_files[client["client_secret_file"]]
    assert secret["secret"] and secret["content"] == _files(run)[grafana.OAUTH_SECRET_FILE]["content"]
    assert validate(closed(json.loads(SCHEMA_PATH.read_text())), conf) == []
    # MAS admits Grafana's token and userinfo requests.
    assert grafana.SERVICE in (_entry(run, mas_render.SERVICE)["service"].allowed_clients or ())


def test_without_mas_no_oauth_and_no_client(program: Any) -> None:
    raw = _raw()
    raw["mas"] = {"enabled": False}
    run = program(raw, secret_keys=SECRET_KEYS)
    files = _files(run)
    assert "auth.generic_oauth" not in _ini(files[grafana.CONFIG]["content"])
    assert grafana.OAUTH_SECRET_FILE not in files


def test_grafana_is_hardened_and_served_on_its_own_hostname(staging_run: Any) -> None:
    run = staging_run
    service = _entry(run, grafana.SERVICE)["service"]
    assert service.user == "472:0" and service.read_only_root and service.drop_capabilities
    assert not service.capabilities_add
    assert service.resources.memory_limit == "512Mi"
    assert [(v.path, v.owner) for v in service.volumes] == [(grafana.DATA, "472:0")]
    assert service.allowed_clients == (stack_view(run.cfg).edge_service,)
    sites = {s.hostname: s for s in stack_view(run.cfg).sites(run.cfg)}
    assert sites["grafana.example.org"].upstream_service == grafana.SERVICE


def test_off_by_default_and_it_needs_monitoring() -> None:
    off = copy.deepcopy(stack_raw("staging"))
    off["monitoring"].pop("grafana", None)
    assert not stack_view(_cfg(off)).oauth_clients
    raw = _raw()
    raw["monitoring"]["enabled"] = False
    with pytest.raises(ConfigError) as err:
        _cfg(raw)
    assert "monitoring.grafana.enabled" in str(err.value)


def test_on_kubernetes_the_dashboards_are_one_configmap_a_grafana_sidecar_finds(program: Any) -> None:
    raw = _raw("prod")
    _r, secret = stack_config("prod", ROOT)
    run = program(raw, secret_keys=tuple(secret))
    maps = [m for m in run.deployment.manifests.values()
            if m["kind"] == "ConfigMap" and m["metadata"]["name"] == grafana.DASHBOARDS_GROUP]
    [dashboards_map] = maps
    assert dashboards_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert len(dashboards_map["data"]) == 5
    for text in dashboards_map["data"].values():
        assert json.loads(text)["uid"].startswith("matrix-stack-")
