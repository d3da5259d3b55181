"""Grafana over the stack's Prometheus: grafana.ini, its provisioning files (the Prometheus data
source, the dashboard provider) and the dashboards (dashboards.py), as plain functions of the
config, the view and the alert table; and its service.

Grafana reads every secret from a file: grafana.ini names them with Grafana's `$__file{path}`
expansion (the image's run.sh would turn GF_*__FILE variables into plain environment variables,
so they are not used). The admin's password is generated; when MAS runs, people log in through
MAS (Grafana's generic OAuth, MAS's client of the same name with its secret in a file) and get
the Viewer role; the admin promotes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pulumi

from components import image_facts, yaml_text
from components.part import Endpoint, MetricsTarget, OAuthClient
from components.platform.spec import File, Port, Resources, Service, Volume
from components.view import StackView
from config import images
from config.model import StackConfig

from . import dashboards
from .alerts import Alert

SERVICE = "grafana"
COMPONENT = "monitoring"
ENDPOINT_KEY = "grafana"
PORT = images.facts_for(images.GRAFANA).port or 3000
CONFIG = images.config_path(images.GRAFANA)
# GF_PATHS_PROVISIONING and GF_PATHS_DATA of the image (config/images.py).
PROVISIONING = "/etc/grafana/provisioning"
DATASOURCES_FILE = f"{PROVISIONING}/datasources/matrix-stack.yaml"
DASHBOARD_PROVIDER_FILE = f"{PROVISIONING}/dashboards/matrix-stack.yaml"
DASHBOARDS_DIR = "/etc/grafana/dashboards"
DASHBOARDS_GROUP = "grafana-dashboards"
SIDECAR_LABEL = (("grafana_dashboard", "1"),)
DATA = "/var/lib/grafana"
SECRETS_DIR = "/secrets"
ADMIN_PASSWORD_FILE = f"{SECRETS_DIR}/admin_password"
SECRET_KEY_FILE = f"{SECRETS_DIR}/secret_key"
OAUTH_SECRET_FILE = f"{SECRETS_DIR}/oauth_client_secret"
ADMIN_USER = "admin"
# Generated secrets (the part's build) and the one MAS generates for its client (shared).
ADMIN_PASSWORD = "grafana_admin_password"
SECRET_KEY = "grafana_secret_key"
# MAS keys its clients by a ULID: a fixed one, so MAS and Grafana agree from the first deploy.
CLIENT_ID = "01JGRAFANA0MATR1XSTACK0000"
# Grafana's callback for generic OAuth (its docs: root_url + /login/generic_oauth).
CALLBACK = "/login/generic_oauth"
# MAS's endpoints (crates/router/src/endpoints.rs): the browser goes to /authorize on the public
# site; Grafana itself dials the token and userinfo endpoints on the private network.
MAS_AUTHORIZE, MAS_TOKEN, MAS_USERINFO = "/authorize", "/oauth2/token", "/oauth2/userinfo"


def endpoint() -> Endpoint:
    # Grafana Live (panels' streaming) is a WebSocket at /api/live/ws.
    return Endpoint(ENDPOINT_KEY, SERVICE, PORT, websockets=True)


def _mas(view: StackView) -> tuple[str, int] | None:
    """MAS's service and port on the private network, when the stack runs MAS."""
    for _host, ep in view.endpoints:
        if ep.key == "auth" and ep.upstream_service:
            return ep.upstream_service, ep.upstream_port
    return None


def oauth_client(cfg: StackConfig) -> OAuthClient:
    return OAuthClient(SERVICE, CLIENT_ID, (cfg.url(ENDPOINT_KEY) + CALLBACK,), (SERVICE,))


def logs_in_through_mas(cfg: StackConfig) -> bool:
    return cfg.monitoring.grafana.enabled and cfg.mas.enabled


def prometheus_url(view: StackView) -> str:
    target = next(t for t in view.metrics_targets if t.role == "prometheus")
    return f"http://{target.service}:{target.port}"


def grafana_ini(cfg: StackConfig, view: StackView) -> dict[str, dict[str, Any]]:
    """grafana.ini's sections. Secrets are `$__file{}` references, never values."""
    https = cfg.scheme == "https"
    ini: dict[str, dict[str, Any]] = {
        "server": {"http_port": PORT, "domain": cfg.host(ENDPOINT_KEY), "root_url": cfg.url(ENDPOINT_KEY) + "/"},
        "security": {"admin_user": ADMIN_USER, "admin_password": f"$__file{{{ADMIN_PASSWORD_FILE}}}",
                     "secret_key": f"$__file{{{SECRET_KEY_FILE}}}", "cookie_secure": https,
                     "disable_gravatar": True},
        "users": {"allow_sign_up": False, "default_theme": "system"},
        "auth.anonymous": {"enabled": False},
        # No calls home: Grafana's egress is Prometheus (and MAS) only.
        "analytics": {"reporting_enabled": False, "check_for_updates": False, "check_for_plugin_updates": False,
                      "feedback_links_enabled": False},
        "news": {"news_feed_enabled": False},
        "log": {"mode": "console"},
        "dashboards": {"default_home_dashboard_path": f"{DASHBOARDS_DIR}/{dashboards.HOME}.json"},
    }
    mas = _mas(view)
    if logs_in_through_mas(cfg) and mas is not None:
        private = f"http://{mas[0]}:{mas[1]}"
        public = cfg.url("auth")
        ini["auth.generic_oauth"] = {
            "enabled": True, "name": "Matrix account", "allow_sign_up": True, "auto_login": False,
            "client_id": CLIENT_ID, "client_secret": f"$__file{{{OAUTH_SECRET_FILE}}}",
            # MAS's userinfo answers `sub` and `username` for the openid scope (its
            # crates/handlers/src/oauth2/userinfo.rs): the login is the Matrix username.
            "scopes": "openid", "use_pkce": True,
            "auth_url": public + MAS_AUTHORIZE, "token_url": private + MAS_TOKEN, "api_url": private + MAS_USERINFO,
            "login_attribute_path": "username", "name_attribute_path": "username",
            # Everyone MAS admits may look; the admin gives more.
            "role_attribute_path": "'Viewer'", "skip_org_role_sync": False,
        }
    return ini


def ini_text(sections: Mapping[str, Mapping[str, Any]]) -> str:
    def value(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else str(v)

    lines: list[str] = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {value(v)}" for key, v in keys.items()]
        lines.append("")
    return "\n".join(lines)


def datasources(view: StackView) -> dict[str, Any]:
    """The provisioned Prometheus data source (Grafana's provisioning format, apiVersion 1)."""
    return {"apiVersion": 1, "datasources": [{
        "name": dashboards.DATASOURCE_NAME, "type": "prometheus", "uid": dashboards.DATASOURCE.uid, "access": "proxy",
        "url": prometheus_url(view), "isDefault": True, "editable": False,
        # Grafana's alerting pages list this data source's rules (read-only: the rule file is ours).
        "jsonData": {"manageAlerts": True, "timeInterval": f"{view.cfg.monitoring.scrape_interval_seconds}s",
                     "httpMethod": "POST"},
    }]}


def dashboard_provider() -> dict[str, Any]:
    return {"apiVersion": 1, "providers": [{
        "name": "matrix-stack", "orgId": 1, "folder": "Matrix stack", "type": "file",
        "disableDeletion": True, "allowUiUpdates": False, "updateIntervalSeconds": 60,
        "options": {"path": DASHBOARDS_DIR, "foldersFromFilesStructure": False},
    }]}


def _yaml(data: Any) -> str:
    return yaml_text.dump(data, sort_keys=False, default_flow_style=False, width=1000)


def files(cfg: StackConfig, view: StackView, targets: Sequence[MetricsTarget], alerts: Sequence[Alert]) -> list[File]:
    out = [File(CONFIG, ini_text(grafana_ini(cfg, view))),
           File(DATASOURCES_FILE, _yaml(datasources(view))),
           File(DASHBOARD_PROVIDER_FILE, _yaml(dashboard_provider()))]
    # One object for every dashboard; on Kubernetes a ConfigMap with the label a Grafana sidecar
    # (kube-prometheus-stack's) looks for, so a Grafana of the cluster's own loads them too.
    out += [File(f"{DASHBOARDS_DIR}/{name}", text, group=DASHBOARDS_GROUP, object_labels=SIDECAR_LABEL)
            for name, text in dashboards.dashboards(targets, alerts).items()]
    return out


def service(cfg: StackConfig, view: StackView, alerts: Sequence[Alert],
            secrets: Mapping[str, pulumi.Input[str]], stand_in: str) -> Service:
    image = cfg.monitoring.grafana.image
    secret_files = [File(ADMIN_PASSWORD_FILE, secrets.get(ADMIN_PASSWORD, stand_in), secret=True, mode=0o400),
                    File(SECRET_KEY_FILE, secrets.get(SECRET_KEY, stand_in), secret=True, mode=0o400)]
    mas = _mas(view)
    reaches = [(t.service, t.port) for t in view.metrics_targets if t.role == "prometheus"]
    if logs_in_through_mas(cfg) and mas is not None:
        client = oauth_client(cfg)
        secret_files.append(File(OAUTH_SECRET_FILE, secrets.get(client.secret, stand_in), secret=True, mode=0o400))
        reaches.append(mas)
    user = image_facts.non_root_user(image)
    return Service(
        name=SERVICE,
        component=COMPONENT,
        image=image,
        files=[*files(cfg, view, view.metrics_targets, alerts), *secret_files],
        ports=[Port("http", PORT)],
        # Its database (SQLite), sessions and plugins: the image's GF_PATHS_DATA, the only place it writes.
        volumes=[Volume("grafana-data", DATA, size="1Gi", owner=user)],
        health=image_facts.http_check(image, PORT),
        user=user,
        read_only_root=True,
        writable_paths=("/tmp",),
        resources=Resources(cpu_request="50m", memory_request="128Mi", memory_limit="512Mi"),
        reaches=tuple(reaches),
        allowed_clients=(view.edge_service,) if view.edge_service else (),
    )
