"""The routing proxy's files: nginx.conf from the view (every part's virtual hosts, certificates
and routes) and the run script that keeps nginx's upstream addresses current. Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from components.nginx import (
    TLS_CIPHERS,
    TLS_PROTOCOLS,
    Header,
    add_headers,
    indent,
    json_location,
    proxy_block,
    security_headers,
    set_route,
)
from components.part import EdgeRoutes
from components.platform.spec import Site
from components.view import StackView
from components.view.certificates import ACME_SERVED, ACME_WEBROOT
from config import images
from config.model import StackConfig

PROXY_HTTP_PORT = 8080
PROXY_HTTPS_PORT = 8443
PROXY_STATUS_PORT = 8081  # private: health and stub_status for metrics
# The rendered nginx.conf is a live file (spec.File.live): in a directory of its own, beside the
# image's /etc/nginx, which the target may replace while nginx runs. nginx itself runs from the
# copy it tested, in SERVING_DIR (scratch space under the read-only root).
NGINX_CONF = images.config_path(images.NGINX).replace("/nginx.conf", "/live/nginx.conf")
PROXY_RUN = "/conf/proxy-run.sh"
NGINX_PID = "/tmp/nginx.pid"
SERVING_DIR = "/tmp/nginx"
# The status listener's path answering the sha256 of the config nginx has applied.
APPLIED_PATH = "/applied"
# The line of nginx.conf listing the upstream names nginx dials (read by the run script).
UPSTREAM_HOSTS_MARK = "# upstream-hosts:"

# Cloudflare's published edge ranges (cloudflare.com/ips); they change rarely.
CLOUDFLARE_RANGES = (
    "173.245.48.0/20", "103.21.244.0/22", "103.22.200.0/22", "103.31.4.0/22", "141.101.64.0/18",
    "108.162.192.0/18", "190.93.240.0/20", "188.114.96.0/20", "197.234.240.0/22", "198.41.128.0/17",
    "162.158.0.0/15", "104.16.0.0/13", "104.24.0.0/14", "172.64.0.0/13", "131.0.72.0/22",
    "2400:cb00::/32", "2606:4700::/32", "2803:f800::/32", "2405:b500::/32", "2405:8100::/32",
    "2a06:98c0::/29", "2c0f:f248::/32",
)


def listen(view: StackView, hostname: str) -> list[str]:
    """The listen lines of one public server block: plain HTTP, or TLS with that host's
    certificate (the view's certificate plan decides which certificate each host gets)."""
    cert = view.certificate_for(hostname) if view.proxy_terminates_tls else None
    if cert is None:
        return [f"listen {PROXY_HTTP_PORT};"]
    return [f"listen {PROXY_HTTPS_PORT} ssl http2;", f"ssl_certificate {cert.cert_path};",
            f"ssl_certificate_key {cert.key_path};", f"ssl_protocols {TLS_PROTOCOLS};",
            f"ssl_ciphers {TLS_CIPHERS};", "ssl_prefer_server_ciphers off;"]


def site_headers(cfg: StackConfig, frame_ancestors: tuple[str, ...] | None = None) -> tuple[Header, ...]:
    """The security headers of one public server block. HSTS whenever clients reach the stack
    over HTTPS: the proxy's own TLS, or a front (Cloudflare, the Ingress) that passes nginx's
    headers on to the client."""
    return security_headers(hsts=cfg.tls_mode != "none", frame_ancestors=frame_ancestors)


def real_ip(cfg: StackConfig, view: StackView) -> list[str]:
    """Restore the client's address from X-Forwarded-For when a trusted proxy (Cloudflare's edge,
    the Ingress) sits in front: Synapse's per-IP rate limits, the admin allowlist, inbound
    federation stickiness and the logs all need the real one, not the proxy's."""
    trusted: list[str] = []
    if cfg.cloudflare.enabled:
        trusted += CLOUDFLARE_RANGES
    trusted += view.target.trusted_proxy_ranges()  # the target's own front (the Ingress controller, a Docker host's front proxy)
    if not trusted:
        return []
    return [*(f"set_real_ip_from {cidr};" for cidr in trusted), "real_ip_header X-Forwarded-For;",
            "real_ip_recursive on;"]


def plain_http_server(view: StackView) -> list[str]:
    """With TLS, port 80 only answers ACME HTTP-01 challenges and redirects to HTTPS."""
    if not view.proxy_terminates_tls:
        return []
    # No HSTS here: browsers ignore it over plain HTTP.
    headers = security_headers(hsts=False, frame_ancestors=None)
    lines = ["", "server {", f"    listen {PROXY_HTTP_PORT} default_server;", f"    {set_route('redirect')}",
             *indent(add_headers(headers))]
    if any(c.source == "acme" for c in view.certificates):
        lines += ["    location /.well-known/acme-challenge/ {", f"        root {ACME_WEBROOT};", "    }"]
    lines += ["    location / {", "        return 301 https://$host$request_uri;", "    }", "}"]
    return lines


def well_known_server(cfg: StackConfig, view: StackView) -> dict[str, object]:
    # Federation arrives on the HTTPS port through delegation (443 by default: Cloudflare does not
    # proxy 8448); a Docker host may publish the proxy on another port.
    return {"m.server": f"{cfg.host('matrix')}:{view.target.public_port(cfg.scheme)}"}


def well_known_client(cfg: StackConfig, extra: Mapping[str, object]) -> dict[str, object]:
    doc: dict[str, object] = {"m.homeserver": {"base_url": cfg.url("matrix")}}
    doc.update(extra)
    return doc


def _host_routes(routes: Sequence[EdgeRoutes], key: str) -> list[EdgeRoutes]:
    return sorted((r for r in routes if r.host_key == key), key=lambda r: r.order)


def render_nginx(cfg: StackConfig, view: StackView, sites: Sequence[Site], upstreams: Mapping[str, str],
                 upstream_hosts: Sequence[str] = ()) -> str:
    """nginx.conf: the Matrix host with every part's routes and the well-known documents, the
    server name's well-known documents when it is delegated, each part's site, the HTTP redirect
    and the private status listener. `upstreams` maps a site's service to the address it is
    dialled at when that is not its name (another Docker host); `upstream_hosts`, the names
    nginx dials, are listed in a comment for the run script's address watch."""
    lines: list[str] = [
        "# Rendered by matrix-stack from the worker table; do not edit by hand.",
        f"{UPSTREAM_HOSTS_MARK} {' '.join(upstream_hosts)}",
        # A reload waits for the old workers' requests; a long-poll must not hold it forever.
        "worker_shutdown_timeout 60s;",
        "worker_processes auto;",
        f"pid {NGINX_PID};",
        "error_log /dev/stderr warn;",
        "events {",
        "    worker_connections 4096;",
        "}",
        "http {",
    ]
    http: list[str] = [
        "default_type application/octet-stream;",
        "server_tokens off;",
        "sendfile on;",
        "client_body_temp_path /tmp/nginx-client-body;",
        "proxy_temp_path /tmp/nginx-proxy;",
        "fastcgi_temp_path /tmp/nginx-fastcgi;",
        "uwsgi_temp_path /tmp/nginx-uwsgi;",
        "scgi_temp_path /tmp/nginx-scgi;",
        # The route name in the access log shows which role served each request.
        "log_format matrix '$remote_addr $host \"$request\" $status route=$synapse_route "
        "upstream=$upstream_addr time=$request_time';",
        "access_log /dev/stdout matrix;",
        *real_ip(cfg, view),
        "",
        "map $http_upgrade $connection_upgrade {",
        "    default upgrade;",
        "    '' close;",
        "}",
    ]
    for routes in view.edge_routes:
        http += routes.http
    http.append("")

    # ---- the Matrix host: the parts' routes (Synapse's client and federation API, MAS's logins)
    matrix_host = cfg.host("matrix")
    # No page embeds the Matrix host or the server name's well-known documents.
    headers = site_headers(cfg)
    well_known = [
        *json_location("/.well-known/matrix/server", well_known_server(cfg, view), headers),
        *json_location("/.well-known/matrix/client", well_known_client(cfg, view.well_known_client), headers),
    ]
    matrix_routes = _host_routes(view.edge_routes, "matrix")
    server: list[str] = [*listen(view, matrix_host), f"server_name {matrix_host};", *add_headers(headers)]
    for routes in matrix_routes:
        server += routes.preamble
    server += well_known
    for routes in matrix_routes:
        server += routes.locations
    server += ["location / {", "    return 404;", "}"]
    http += ["server {", *indent(server), "}"]

    # ---- the server name, when delegated to another host: only the well-known documents
    if cfg.server_name != matrix_host:
        delegated = [*listen(view, cfg.server_name), f"server_name {cfg.server_name};", *add_headers(headers),
                     set_route("well-known"), *well_known, "location / {", "    return 404;", "}"]
        http += ["", "server {", *indent(delegated), "}"]

    # ---- other public sites (Element Call, ntfy, Element Web ...)
    for site in sorted(sites, key=lambda s: s.hostname):
        site_security = site_headers(cfg, site.frame_ancestors)
        body = [*listen(view, site.hostname), f"server_name {site.hostname};", *add_headers(site_security),
                f"client_max_body_size {site.max_body};", set_route(f"site-{site.upstream_service}")]
        for path, document in sorted(site.static_json.items()):
            body += json_location(path, json.loads(document), site_security)
        upstream = f"{upstreams.get(site.upstream_service, site.upstream_service)}:{site.upstream_port}"
        body += ["location / {", *indent(proxy_block(upstream, websockets=site.websockets)), "}"]
        http += ["", "server {", *indent(body), "}"]

    http += plain_http_server(view)
    # Private listener: health for the target's checks, stub_status for metrics scraping.
    http += ["", "server {", f"    listen {PROXY_STATUS_PORT};", "    access_log off;",
             "    location = /health {", "        return 200 'OK';", "    }",
             "    location = /stub_status {", "        stub_status;", "    }",
             f"    location = {APPLIED_PATH} {{", "        default_type text/plain;",
             f"        alias {SERVING_DIR}/applied;", "    }", "}"]
    lines += indent(http)
    lines.append("}")
    return "\n".join(lines) + "\n"


def proxy_run_script(live_conf: str, watch_acme: bool) -> str:
    """nginx in the foreground, from a copy of `live_conf` it has tested, and a watcher that
    applies a change without a restart.

    The watcher applies a new `live_conf` (the target may replace it while nginx runs) by
    graceful reload: a copy is tested first (`nginx -t`) and a refused one leaves the old config
    serving; after the reload it waits until the old worker processes have finished their
    requests, then records the applied config's sha256, which the status listener answers at
    APPLIED_PATH. It also reloads when an upstream name's addresses change (nginx resolves them
    at load; Docker gives a new container a new address) and, with ACME, when a certificate
    renews. `health` as the first argument checks that nginx serves the current file with the
    current addresses, and answers."""
    lines = [
        "#!/bin/sh",
        "# Rendered by matrix-stack.",
        "set -eu",
        f"LIVE={live_conf}",
        f"RUN={SERVING_DIR}",
        f"CONF={SERVING_DIR}/nginx.conf",
        "digest() { sha256sum < \"$1\" | cut -d' ' -f1; }",
        "# The names nginx dials, listed in the config by its renderer.",
        f"hosts() {{ sed -n 's/^{UPSTREAM_HOSTS_MARK} //p' \"$1\"; }}",
        "addresses() {",
        '    for h in $(hosts "$1"); do',
        """        printf '%s=%s\\n' "$h" "$(getent hosts "$h" | cut -d' ' -f1 | sort | paste -sd, -)\"""",
        "    done",
        "}",
        'if [ "${1:-}" = health ]; then',
        '    [ "$(addresses "$CONF")" = "$(cat "$RUN/addresses")" ] || exit 1',
        '    [ "$(digest "$LIVE")" = "$(cat "$RUN/applied")" ] || exit 1',
        f"    exec wget -qO- http://127.0.0.1:{PROXY_STATUS_PORT}/health",
        "fi",
        'mkdir -p "$RUN"',
        "# adopt: test a snapshot of the live file; only a config nginx accepts replaces the one it serves.",
        "adopt() {",
        '    cp "$LIVE" "$RUN/candidate.conf"',
        # (grep reads all its input: an early exit would kill the writer with SIGPIPE, which nginx,
        # the parent of this script's jobs, logs as an alert.)
        '    if addresses "$RUN/candidate.conf" | grep "=$" >/dev/null; then return 1; fi  # a name does not resolve yet',
        '    if ! nginx -t -q -c "$RUN/candidate.conf"; then',
        '        digest "$RUN/candidate.conf" > "$RUN/refused"',
        "        echo 'proxy: the new configuration was refused (nginx -t above); the old one keeps serving' >&2",
        "        return 1",
        "    fi",
        '    mv "$RUN/candidate.conf" "$CONF"',
        "}",
        "# drained: no worker process of the previous configuration is still finishing requests.",
        "drained() {",
        f'    master=$(cat {NGINX_PID} 2>/dev/null) || return 0',
        '    for p in $(cat "/proc/$master/task/$master/children" 2>/dev/null); do',
        "        if grep -qs 'is shutting down' \"/proc/$p/cmdline\"; then return 1; fi",
        "    done",
        "}",
        "reload() {",
        '    addresses "$CONF" > "$RUN/addresses"',
        '    nginx -c "$CONF" -s reload || return 0',
        "    sleep 1",
        "    until drained; do sleep 1; done",
        '    digest "$CONF" > "$RUN/applied"',
        "}",
        'until [ -s "$LIVE" ] && adopt; do echo "proxy: waiting for $LIVE and its upstream names"; sleep 1; done',
        'addresses "$CONF" > "$RUN/addresses"',
        'digest "$CONF" > "$RUN/applied"',
        ': > "$RUN/refused"',
        "watch() {",
        "    while sleep 1; do",
        '        now=$(digest "$LIVE")',
        '        if [ "$now" != "$(cat "$RUN/applied")" ] && [ "$now" != "$(cat "$RUN/refused")" ] && adopt; then',
        "            reload; continue",
        "        fi",
        '        seen=$(addresses "$CONF")',
        '        [ "$seen" = "$(cat "$RUN/addresses")" ] && continue',
        "        printf '%s\\n' \"$seen\" | grep '=$' >/dev/null && continue",
        "        reload",
        "    done",
        "}",
        "watch &",
    ]
    if watch_acme:
        lines += [
            "watch_certificates() {",
            '    last=""',
            "    while sleep 60; do",
            f'        now=$(cat {ACME_SERVED}/*/fullchain.pem 2>/dev/null | md5sum)',
            '        if [ -n "$last" ] && [ "$now" != "$last" ]; then nginx -c "$CONF" -s reload; fi',
            '        last="$now"',
            "    done",
            "}",
            "watch_certificates &",
        ]
    lines += ["exec nginx -c \"$CONF\" -g 'daemon off;'", ""]
    return "\n".join(lines)
