"""Element Web under mocks: the container's config.json, or a Cloudflare Pages project with its
domain and CNAME."""

from __future__ import annotations

import json
from typing import Any

from components.element_web import render as web

BASE: dict[str, Any] = {
    "server_name": "example.org",
    "hostnames": {"matrix": "matrix.example.org"},
    "tls": {"mode": "acme", "acme_email": "ops@example.org"},
}
PAGES: dict[str, Any] = {
    **BASE,
    "tls": {"mode": "origin_ca"},
    "element_web": {"mode": "pages", "source": {"owner": "acme", "repo": "element-web", "branch": "stable"},
                    "node_version": "22"},
    "cloudflare": {"enabled": True, "zone": "example.org", "origin_ip": "198.51.100.10",
                   "account_id": "0123456789abcdef0123456789abcdef"},
    "cloudflare_api_token": "token-stand-in",
}


def test_container_config_points_at_the_homeserver(program: Any) -> None:
    run = program(BASE)
    entry = next(s for s in run.services if s["service"].name == "element-web")
    conf = json.loads(next(f["content"] for f in entry["files"] if f["path"] == web.CONFIG))
    assert conf["default_server_config"]["m.homeserver"] == {
        "base_url": "https://matrix.example.org", "server_name": "example.org"}
    assert conf["element_call"] == {"use_exclusively": True}
    assert entry["env"]["ELEMENT_WEB_PORT"] == ("8080", False)
    nginx = next(f["content"] for s in run.services if s["service"].name == "synapse-proxy"
                 for f in s["files"] if f["path"].endswith("nginx.conf"))
    assert "server_name app.example.org;" in nginx
    assert run.deployment.outputs["element_web_url"] == "https://app.example.org"


def test_no_calls_without_element_call(program: Any) -> None:
    run = program({**BASE, "element_call": {"enabled": False}})
    entry = next(s for s in run.services if s["service"].name == "element-web")
    conf = json.loads(entry["files"][0]["content"])
    assert "element_call" not in conf


def test_pages_project_domain_and_cname(program: Any) -> None:
    run = program(PAGES, stack="prod", secret_keys=("cloudflare_api_token",))
    assert "element-web" not in {s["service"].name for s in run.services}
    [project] = run.of_type("cloudflare:index/pagesProject:PagesProject")
    inputs = project.plain_inputs()
    assert inputs["accountId"] == "0123456789abcdef0123456789abcdef"
    assert inputs["productionBranch"] == "stable"
    assert inputs["buildConfig"]["destinationDir"] == "webapp"
    assert inputs["buildConfig"]["buildCommand"].startswith("yarn install --ignore-engines && yarn build")
    assert inputs["source"]["type"] == "github"
    assert inputs["source"]["config"]["owner"] == "acme" and inputs["source"]["config"]["repoName"] == "element-web"
    env = inputs["deploymentConfigs"]["production"]["envVars"]
    assert env["NODE_VERSION"] == {"type": "plain_text", "value": "22"}
    built = json.loads(env[web.CONFIG_ENV]["value"])
    assert built["default_server_config"]["m.homeserver"]["base_url"] == "https://matrix.example.org"
    [domain] = run.of_type("cloudflare:index/pagesDomain:PagesDomain")
    assert domain.plain_inputs()["name"] == "app.example.org"
    app = [r.plain_inputs() for r in run.of_type("cloudflare:index/dnsRecord:DnsRecord")
           if r.plain_inputs()["name"] == "app.example.org"]
    assert len(app) == 1 and app[0]["type"] == "CNAME" and app[0]["proxied"] is True
    assert app[0]["content"] == inputs["name"] + ".pages.dev"


def test_pages_build_command_writes_the_config_byte_for_byte() -> None:
    assert web.build_command().endswith(f"printf '%s' \"${web.CONFIG_ENV}\" > webapp/config.json")
