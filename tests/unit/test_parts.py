"""Parts declare themselves: a part registered in the catalog alone gets its site, DNS record,
certificate, Ingress host and placement; and every list of public hostnames derives from the
endpoints, so they agree for every stack."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import pulumi
import pytest

import config
import stack
from components import catalog
from components.edge import render as edge_render
from components.part import BuildContext, Component, Contribution, DatabaseClaim, Endpoint, MetricsTarget, Part
from components.platform.spec import Port, Service
from components.view import StackView
from render import offline
from tests.conftest import ROOT, stack_config, stack_view

STAGING, STAGING_SECRETS = stack_config("staging", ROOT)
PROD, PROD_SECRETS = stack_config("prod", ROOT)
PAGES = {"mode": "pages", "source": {"owner": "example", "repo": "element-web"}}


class AdminUi(Part):
    """A tiny web UI on admin.<server name>: the whole of what a new part declares."""

    name = "admin-ui"

    def endpoints(self, cfg: config.StackConfig) -> list[Endpoint]:
        return [Endpoint("admin", "admin-ui", 8080)]

    def database_claims(self, cfg: config.StackConfig) -> list[DatabaseClaim]:
        return [DatabaseClaim("admin", "admin", ("admin-ui",), 4, "admin_database")]

    def metrics_targets(self, cfg: config.StackConfig) -> list[MetricsTarget]:
        return [MetricsTarget("admin-ui", 9100)]

    def services(self, cfg: config.StackConfig, view: StackView,
                 secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
        return [Service(name="admin-ui", component="admin-ui", image="example/admin-ui:1.0.0",
                        ports=[Port("http", 8080)], metrics_port=9100)]

    def build(self, cfg: config.StackConfig, ctx: BuildContext) -> Contribution:
        component = Component("AdminUi", self.name)
        component.register_outputs({})
        # Its database password, shared with the bundled PostgreSQL's setup and the backup.
        return Contribution(parent=component, services=self.services(cfg, ctx.view, {}),
                            shared_secrets={"admin_database": pulumi.Output.secret("stand-in-admin-password")})


@pytest.fixture
def with_admin_ui(monkeypatch: pytest.MonkeyPatch) -> None:
    # The one registration: an entry in the catalog.
    monkeypatch.setattr(catalog, "PARTS", [*catalog.PARTS, AdminUi()])


def _file(run: offline.Run, service: str, path: str) -> str:
    for item in run.services:
        if item["service"].name == service:
            return str(next(f["content"] for f in item["files"] if f["path"] == path))
    raise KeyError(service)


def _nginx_hosts(run: offline.Run) -> set[str]:
    conf = _file(run, "synapse-proxy", "/etc/nginx/live/nginx.conf")
    return {name for line in re.findall(r"^\s*server_name\s+([^;]+);", conf, re.MULTILINE) for name in line.split()}


def _dns_names(run: offline.Run) -> set[str]:
    return {r.plain_inputs()["name"] for r in run.of_type("cloudflare:index/dnsRecord:DnsRecord")}


def _ingress_hosts(run: offline.Run) -> set[str]:
    return {rule["host"] for key, obj in run.deployment.manifests.items() if key.startswith("ingress-")
            for rule in obj["spec"]["rules"]}


def _certificate_names(run: offline.Run) -> set[str]:
    return {h for cert in stack_view(run.cfg).certificates for h in cert.hostnames}


@pytest.mark.usefixtures("with_admin_ui")
def test_a_part_registered_in_the_catalog_alone_gets_its_site_record_certificate_and_placement() -> None:
    raw = copy.deepcopy(STAGING)
    # Placement names it: a host may carry it (an unknown name would be refused).
    raw["target"]["hosts"][0]["services"] = ["synapse-*", "admin-ui"]
    run = offline.run(raw, stack="staging", secret_keys=STAGING_SECRETS)
    conf = _file(run, "synapse-proxy", "/etc/nginx/live/nginx.conf")
    site = conf[conf.index("server_name admin.example.org;"):]
    assert "proxy_pass http://admin-ui:8080;" in site[: site.index("\n    }\n")]
    assert "admin.example.org" in _dns_names(run)
    assert "admin.example.org" in _certificate_names(run)
    assert "admin.example.org" in _file(run, "acme", "/conf/acme/run.sh")
    assert [c for c in run.of_type("docker:index/container:Container") if c.name == "admin-ui"]
    # The proxy waits for its address (the names it dials are listed in its config).
    assert f"{edge_render.UPSTREAM_HOSTS_MARK} admin-ui" in conf
    # Its database claim: a role and a database on the bundled PostgreSQL, which admits it and
    # counts its pool, a dump in every backup and a step of the restore procedure.
    assert "CREATE ROLE %I LOGIN', 'admin'" in _file(run, "synapse-postgres-setup", "/conf/databases.sql")
    server = next(s["service"] for s in run.services if s["service"].name == "synapse-postgres")
    assert "admin-ui" in server.allowed_clients
    assert "dbname=admin user=admin" in _file(run, "backup-dump", "/backup/bin/dump.sh")
    assert "Restore the admin database" in run.deployment.outputs["backup_restore_procedure"]
    # Its metrics endpoint, in the view a monitoring part scrapes from.
    assert MetricsTarget("admin-ui", 9100) in stack_view(run.cfg).metrics_targets

    prod = offline.run(PROD, stack="prod", secret_keys=PROD_SECRETS)
    assert "admin.example.org" in _ingress_hosts(prod)
    assert "deployment-admin-ui" in prod.deployment.manifests
    assert "servicemonitor-admin-ui" in prod.deployment.manifests


@pytest.mark.usefixtures("with_admin_ui")
def test_the_zone_check_covers_a_registered_part() -> None:
    raw = {**copy.deepcopy(STAGING), "hostnames": {"matrix": "matrix.example.org"}}
    raw["cloudflare"] = {**raw["cloudflare"], "zone": "matrix.example.org"}
    with pytest.raises(config.ConfigError) as caught:
        stack.parse(raw, STAGING_SECRETS)
    refused = {p.path for p in caught.value.problems}
    assert {"server_name", "hostnames.admin", "hostnames.call", "hostnames.ntfy"} <= refused
    assert "hostnames.matrix" not in refused


def _stacks() -> dict[str, tuple[dict[str, Any], tuple[str, ...]]]:
    stacks: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {}
    stacks["staging"] = (STAGING, STAGING_SECRETS)
    stacks["prod"] = (PROD, PROD_SECRETS)
    pages = copy.deepcopy(STAGING)
    pages["element_web"] = PAGES
    stacks["staging-pages-acme"] = (pages, STAGING_SECRETS)
    origin = copy.deepcopy(pages)
    origin["tls"] = {"mode": "origin_ca"}
    origin["coturn"] = {"enabled": True, "external_ip": "192.0.2.30"}
    stacks["staging-pages-origin-ca-turn"] = (origin, STAGING_SECRETS)
    delegated = copy.deepcopy(STAGING)
    delegated["hostnames"] = {"matrix": "matrix.example.org", "call": "video.example.org"}
    stacks["staging-delegated"] = (delegated, STAGING_SECRETS)
    prod_pages = copy.deepcopy(PROD)
    prod_pages["element_web"] = PAGES
    prod_pages["coturn"] = {"enabled": True, "external_ip": "192.0.2.30"}
    stacks["prod-pages-turn"] = (prod_pages, PROD_SECRETS)
    return stacks


@pytest.mark.parametrize("name", list(_stacks()))
def test_every_hostname_list_derives_from_the_endpoints(name: str) -> None:
    raw, secrets = _stacks()[name]
    run = offline.run(raw, stack=name, secret_keys=secrets)
    cfg = run.cfg
    view = stack_view(cfg)
    every = {host for host, _endpoint in view.endpoints}
    served = set(view.proxy_hostnames)
    elsewhere = {host for host, e in view.endpoints if not e.served_by_proxy} - served
    assert _nginx_hosts(run) == served
    assert _certificate_names(run) == served
    assert _dns_names(run) == every == served | elsewhere
    if cfg.target.kind == "kubernetes":
        assert _ingress_hosts(run) == served
    # The zone check judges exactly the hostnames that get records.
    outside = copy.deepcopy(raw)
    outside["cloudflare"] = {**outside["cloudflare"], "zone": "elsewhere.example"}
    with pytest.raises(config.ConfigError) as caught:
        stack.parse(outside, secrets)
    judged = {p.value.strip("'") for p in caught.value.problems if "Cloudflare zone" in p.message}
    assert judged == every


def test_pages_with_acme_asks_for_no_certificate_of_the_pages_hostname() -> None:
    """app. is a CNAME to Cloudflare Pages: the proxy never serves it, so an HTTP-01 challenge for
    it can never pass and would be retried forever."""
    raw = copy.deepcopy(STAGING)
    raw["element_web"] = PAGES
    run = offline.run(raw, stack="staging", secret_keys=STAGING_SECRETS)
    acme = _file(run, "acme", "/conf/acme/run.sh")
    assert "app.example.org" not in acme
    assert "ntfy.example.org" in acme
    [record] = [r.plain_inputs() for r in run.of_type("cloudflare:index/dnsRecord:DnsRecord")
                if r.plain_inputs()["name"] == "app.example.org"]
    assert record["type"] == "CNAME" and record["proxied"] is True
