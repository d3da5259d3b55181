"""The routing proxy: which process serves each request, rendered as nginx.conf. Pure.

Route groups hold the endpoint regexes of element-hq/synapse docs/workers.md (matched
case-insensitively, as Synapse's own docker nginx does). Which process serves a group comes from
the worker table: the most dedicated role present that lists the group, else a fallback role
(generic), else main. Locations are emitted in ROUTE_GROUPS order, most specific first, and
anything unmatched under /_matrix or /_synapse/client falls through to main.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from components.platform.spec import Site
from config import images
from config.model import StackConfig

from .workers import MAIN, ROLE_BY_NAME, Balance, Process, Role, Topology

_C = "(api/v1|r0|v3|unstable)"
_C3 = "(r0|v3|unstable)"
_F = "(v1|v2)"


@dataclass(frozen=True)
class RouteGroup:
    name: str
    patterns: tuple[str, ...]
    balance: Balance = "round_robin"
    # With no role serving it: GET/HEAD go to the 'reads' pool and writes to main (account data,
    # presence and push rules may be read on any worker but written only by their writer).
    read_anywhere: bool = False
    main_only: bool = False


ROUTE_GROUPS: tuple[RouteGroup, ...] = (
    # Servlets registered only on main (synapse/rest/__init__.py): pinned before any worker rule
    # so a broader worker pattern can never catch them.
    RouteGroup("main_only", (
        f"^/_matrix/client/{_C3}/auth/.*/fallback/web$",
        f"^/_matrix/client/{_C}/user/.*/openid/request_token$",
        f"^/_matrix/client/{_C3}/pushers",
        f"^/_matrix/client/{_C}/logout",
        f"^/_matrix/client/{_C3}/refresh$",
        f"^/_matrix/client/{_C}/rooms/.*/(forget|upgrade|report)",
        "^/_matrix/client/unstable/org.matrix.msc4140/delayed_events/[^/]+$",
        "^/_matrix/client/unstable/org.matrix.msc4140/delayed_events/[^/]+/(cancel|send)$",
        "^/_matrix/federation/v1/openid/userinfo$",
    ), main_only=True),
    RouteGroup("typing", (f"^/_matrix/client/{_C}/rooms/.*/typing",)),
    RouteGroup("to_device", (f"^/_matrix/client/{_C3}/sendToDevice/",)),
    RouteGroup("account_data", (f"^/_matrix/client/{_C3}/.*/tags", f"^/_matrix/client/{_C3}/.*/account_data"),
               read_anywhere=True),
    RouteGroup("receipts", (f"^/_matrix/client/{_C3}/rooms/.*/receipt", f"^/_matrix/client/{_C3}/rooms/.*/read_markers")),
    RouteGroup("presence", (f"^/_matrix/client/{_C}/presence/",), read_anywhere=True),
    RouteGroup("push_rules", (f"^/_matrix/client/{_C}/pushrules/",), read_anywhere=True),
    RouteGroup("thread_subscriptions", ("^/_matrix/client/unstable/io.element.msc4306/.*",)),
    RouteGroup("device_lists", (
        f"^/_matrix/client/{_C}/devices(/|$)",
        "^/_matrix/client/(r0|v3)/delete_devices$",
        f"^/_matrix/client/{_C}/keys/upload",
        f"^/_matrix/client/{_C}/keys/device_signing/upload$",
        f"^/_matrix/client/{_C}/keys/signatures/upload$",
    )),
    RouteGroup("media", (
        "^/_matrix/media/",
        "^/_matrix/client/v1/media/.*$",
        "^/_matrix/federation/v1/media/.*$",
        "^/_synapse/admin/v1/purge_media_cache$",
        "^/_synapse/admin/v1/room/.*/media.*$",
        "^/_synapse/admin/v1/user/.*/media.*$",
        "^/_synapse/admin/v1/users/.*/media$",
        "^/_synapse/admin/v1/media/.*$",
        "^/_synapse/admin/v1/quarantine_media/.*$",
    )),
    RouteGroup("federation_inbound", ("^/_matrix/federation/v1/send/",), balance="source_ip"),
    RouteGroup("federation_reader", (
        "^/_matrix/federation/v1/version$",
        f"^/_matrix/federation/{_F}/event/",
        f"^/_matrix/federation/{_F}/state/",
        f"^/_matrix/federation/{_F}/state_ids/",
        f"^/_matrix/federation/{_F}/backfill/",
        f"^/_matrix/federation/{_F}/get_missing_events/",
        f"^/_matrix/federation/{_F}/publicRooms",
        f"^/_matrix/federation/{_F}/query/",
        f"^/_matrix/federation/{_F}/make_join/",
        f"^/_matrix/federation/{_F}/make_leave/",
        f"^/_matrix/federation/{_F}/send_join/",
        f"^/_matrix/federation/{_F}/send_leave/",
        "^/_matrix/federation/v1/make_knock/",
        "^/_matrix/federation/v1/send_knock/",
        f"^/_matrix/federation/{_F}/invite/",
        f"^/_matrix/federation/{_F}/query_auth/",
        f"^/_matrix/federation/{_F}/event_auth/",
        "^/_matrix/federation/v1/timestamp_to_event/",
        f"^/_matrix/federation/{_F}/exchange_third_party_invite/",
        f"^/_matrix/federation/{_F}/user/devices/",
        "^/_matrix/key/v2/query",
        "^/_matrix/federation/v1/hierarchy/",
    )),
    # This server's own signing keys. Every process whose listener has the `federation` (or
    # `keys`) resource mounts the key resource (synapse/app/generic_worker.py), and each reads
    # the shared signing key, so main need not answer the servers that fetch them.
    RouteGroup("server_keys", ("^/_matrix/key/v2/server",)),
    RouteGroup("sync", (
        "^/_matrix/client/(v2_alpha|r0|v3)/sync$",
        "^/_matrix/client/(api/v1|v2_alpha|r0|v3)/events$",
        "^/_matrix/client/(api/v1|r0|v3)/initialSync$",
        "^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$",
        "^/_matrix/client/unstable/org.matrix.simplified_msc3575/sync$",
    ), balance="user"),
    RouteGroup("event_creator", (
        f"^/_matrix/client/{_C}/rooms/.*/redact",
        f"^/_matrix/client/{_C}/rooms/.*/send",
        f"^/_matrix/client/{_C}/rooms/.*/state/",
        f"^/_matrix/client/{_C}/rooms/.*/(join|invite|leave|ban|unban|kick)$",
        f"^/_matrix/client/{_C}/join/",
        f"^/_matrix/client/{_C}/knock/",
        f"^/_matrix/client/{_C}/profile/",
    ), balance="room"),
    # Pagination: every request for one room must reach the same instance.
    RouteGroup("messages", (f"^/_matrix/client/{_C}/rooms/.*/messages$",), balance="room"),
    RouteGroup("user_directory", (f"^/_matrix/client/{_C3}/user_directory/search$",)),
    RouteGroup("client_reader", (
        f"^/_matrix/client/{_C}/publicRooms$",
        f"^/_matrix/client/{_C}/rooms/.*/joined_members$",
        f"^/_matrix/client/{_C}/rooms/.*/context/.*$",
        f"^/_matrix/client/{_C}/rooms/.*/members$",
        f"^/_matrix/client/{_C}/rooms/.*/state$",
        "^/_matrix/client/v1/rooms/.*/hierarchy$",
        "^/_matrix/client/(v1|unstable)/rooms/.*/relations/",
        "^/_matrix/client/v1/rooms/.*/threads$",
        f"^/_matrix/client/{_C}/login$",
        f"^/_matrix/client/{_C3}/register$",
        f"^/_matrix/client/{_C3}/register/available$",
        "^/_matrix/client/v1/register/m.login.registration_token/validity$",
        f"^/_matrix/client/{_C3}/password_policy$",
        f"^/_matrix/client/{_C}/account/3pid$",
        f"^/_matrix/client/{_C}/account/whoami$",
        f"^/_matrix/client/{_C}/account/deactivate$",
        "^/_matrix/client/versions$",
        f"^/_matrix/client/{_C}/voip/turnServer$",
        f"^/_matrix/client/{_C}/rooms/.*/event",
        f"^/_matrix/client/{_C}/joined_rooms",
        "^/_matrix/client/(api/v1|r0|v3|unstable/.*)/rooms/.*/aliases",
        "^/_matrix/client/v1/rooms/.*/timestamp_to_event$",
        f"^/_matrix/client/{_C}/search",
        f"^/_matrix/client/{_C3}/user/.*/filter(/|$)",
        f"^/_matrix/client/{_C}/directory/room/.*$",
        f"^/_matrix/client/{_C3}/capabilities$",
        f"^/_matrix/client/{_C3}/notifications$",
        f"^/_matrix/client/{_C3}/keys/query$",
        f"^/_matrix/client/{_C3}/keys/changes$",
        f"^/_matrix/client/{_C3}/keys/claim$",
        f"^/_matrix/client/{_C3}/room_keys/",
        f"^/_matrix/client/{_C}/createRoom$",
        "^/_matrix/client/unstable/im.nheko.summary/summary/.*$",
        "^/_matrix/client/v1/room_summary/.*$",
        "^/_matrix/client/unstable/org.matrix.msc4143/rtc/transports$",
        "^/_matrix/client/unstable/org.matrix.msc4140/delayed_events(/.*/restart)?$",
        "^/_synapse/admin/v1/rooms/[^/]+$",
    )),
    # Admin user lookup: GET only on workers.
    RouteGroup("admin_user_reads", ("^/_synapse/admin/v2/users/[^/]+$",), read_anywhere=True),
)

GROUP_BY_NAME = {group.name: group for group in ROUTE_GROUPS}
READS_GROUP = "reads"  # the pool that serves GETs of read_anywhere groups


def serving_role(topo: Topology, group: str) -> Role | None:
    """The role whose instances serve `group`: most dedicated first, fallback roles last."""
    candidates = [
        ROLE_BY_NAME[name]
        for name, _count in topo.counts
        if group in ROLE_BY_NAME[name].routes
    ]
    candidates.sort(key=lambda role: (role.fallback, len(role.routes), role.name))
    return candidates[0] if candidates else None


@dataclass(frozen=True)
class Upstream:
    name: str
    balance: Balance
    servers: tuple[str, ...]


@dataclass(frozen=True)
class Location:
    group: str
    pattern: str
    upstream: str  # nginx upstream, or a variable set by a method map
    admin: bool = False


@dataclass
class RoutingPlan:
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    locations: list[Location] = field(default_factory=list)
    method_maps: dict[str, tuple[str, str]] = field(default_factory=dict)  # var -> (reads, writes)

    def upstream_for(self, processes: tuple[Process, ...], label: str, balance: Balance,
                     address: dict[str, str]) -> str:
        name = f"synapse_{label}" if balance == "round_robin" else f"synapse_{label}_by_{balance}"
        if name not in self.upstreams:
            servers = tuple(f"{address[p.name]}:{p.port}" for p in processes)
            self.upstreams[name] = Upstream(name, balance, servers)
        return name


def plan(topo: Topology, address: dict[str, str]) -> RoutingPlan:
    """Which upstream serves each pattern, derived from the worker table and the counts."""
    routing = RoutingPlan()
    main = routing.upstream_for((MAIN,), "main", "round_robin", address)

    def pool(group: str, balance: Balance) -> str | None:
        role = serving_role(topo, group)
        if role is None:
            return None
        return routing.upstream_for(topo.instances(role.name), role.name, balance, address)

    for group in ROUTE_GROUPS:
        target = None if group.main_only else pool(group.name, group.balance)
        if target is None and group.read_anywhere:
            reads = pool(READS_GROUP, "round_robin")
            if reads is not None:
                var = f"$synapse_{group.name}_by_method"
                routing.method_maps[var] = (reads, main)
                target = var
        for pattern in group.patterns:
            routing.locations.append(
                Location(group.name, pattern, target or main, admin=pattern.startswith("^/_synapse/admin"))
            )
    return routing


# ---------------------------------------------------------------- nginx text


PROXY_HTTP_PORT = 8080
PROXY_HTTPS_PORT = 8443
PROXY_STATUS_PORT = 8081  # private: health and stub_status for metrics
NGINX_CONF = images.config_path(images.NGINX)

CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS"),
    ("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization"),
)

_HASH_KEYS = {"user": "$synapse_user", "room": "$synapse_room", "source_ip": "$remote_addr"}


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _json_location(path: str, document: dict[str, object]) -> list[str]:
    body = json.dumps(document, sort_keys=True, separators=(",", ":"))
    lines = [f"location = {path} {{", "    default_type application/json;"]
    lines += [f'    add_header {k} "{v}" always;' for k, v in CORS_HEADERS]
    lines += [f"    return 200 {_quote(body)};", "}"]
    return lines


def _indent(lines: list[str], depth: int = 1) -> list[str]:
    pad = "    " * depth
    return [pad + line if line else line for line in lines]


def _proxy_block(upstream: str, *, websockets: bool = False, timeout: str = "300s") -> list[str]:
    # No URI after the upstream: nginx must pass the path untouched or federation signatures
    # break (Synapse's reverse proxy docs).
    lines = [
        f"proxy_pass http://{upstream};",
        "proxy_set_header Host $host;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_http_version 1.1;",
        f"proxy_read_timeout {timeout};",
    ]
    if websockets:
        lines += ["proxy_set_header Upgrade $http_upgrade;", "proxy_set_header Connection $connection_upgrade;",
                  "proxy_buffering off;"]
    else:
        lines.append('proxy_set_header Connection "";')
    return lines


def _admin_acl(allowlist: list[str]) -> list[str]:
    return [f"allow {cidr};" for cidr in allowlist] + ["deny all;"]


def _listen(cfg: StackConfig, hostname: str) -> list[str]:
    """The listen lines of one public server block: plain HTTP, or TLS with that host's
    certificate (components/tls/plan.py decides which certificate each host gets)."""
    from components.tls.plan import certificate_for, proxy_terminates_tls

    cert = certificate_for(cfg, hostname) if proxy_terminates_tls(cfg) else None
    if cert is None:
        return [f"listen {PROXY_HTTP_PORT};"]
    return [f"listen {PROXY_HTTPS_PORT} ssl http2;", f"ssl_certificate {cert.cert_path};",
            f"ssl_certificate_key {cert.key_path};", "ssl_protocols TLSv1.2 TLSv1.3;"]


# Cloudflare's published edge ranges (cloudflare.com/ips); they change rarely.
CLOUDFLARE_RANGES = (
    "173.245.48.0/20", "103.21.244.0/22", "103.22.200.0/22", "103.31.4.0/22", "141.101.64.0/18",
    "108.162.192.0/18", "190.93.240.0/20", "188.114.96.0/20", "197.234.240.0/22", "198.41.128.0/17",
    "162.158.0.0/15", "104.16.0.0/13", "104.24.0.0/14", "172.64.0.0/13", "131.0.72.0/22",
    "2400:cb00::/32", "2606:4700::/32", "2803:f800::/32", "2405:b500::/32", "2405:8100::/32",
    "2a06:98c0::/29", "2c0f:f248::/32",
)


def _real_ip(cfg: StackConfig) -> list[str]:
    """Restore the client's address from X-Forwarded-For when a trusted proxy (Cloudflare's edge,
    the Ingress) sits in front: Synapse's per-IP rate limits, the admin allowlist, inbound
    federation stickiness and the logs all need the real one, not the proxy's."""
    from components.platform.targets import target_of

    trusted: list[str] = []
    if cfg.cloudflare.enabled:
        trusted += CLOUDFLARE_RANGES
    trusted += target_of(cfg).trusted_proxy_ranges()
    if not trusted:
        return []
    return [*(f"set_real_ip_from {cidr};" for cidr in trusted), "real_ip_header X-Forwarded-For;",
            "real_ip_recursive on;"]


def _plain_http_server(cfg: StackConfig) -> list[str]:
    """With TLS, port 80 only answers ACME HTTP-01 challenges and redirects to HTTPS."""
    from components.tls.plan import ACME_WEBROOT, certificates, proxy_terminates_tls

    if not proxy_terminates_tls(cfg):
        return []
    lines = ["", "server {", f"    listen {PROXY_HTTP_PORT} default_server;", "    set $synapse_route redirect;"]
    if any(c.source == "acme" for c in certificates(cfg)):
        lines += ["    location /.well-known/acme-challenge/ {", f"        root {ACME_WEBROOT};", "    }"]
    lines += ["    location / {", "        return 301 https://$host$request_uri;", "    }", "}"]
    return lines


def _delegated_auth(cfg: StackConfig, address: dict[str, str]) -> list[str]:
    """With MAS owning logins, its compatibility layer answers login, logout and refresh: the
    first location, so no Synapse route can match them (MAS's reverse-proxy guide)."""
    if not cfg.mas.owns_logins:
        return []
    from components.mas import render as mas

    upstream = f"{address.get(mas.SERVICE, mas.SERVICE)}:{mas.HTTP_PORT}"
    return [f"location ~ {mas.COMPAT_PATTERN} {{",
            *_indent(["set $synapse_route mas;", *_proxy_block(upstream)]), "}"]


def well_known_server(cfg: StackConfig) -> dict[str, object]:
    # Federation arrives on the HTTPS port through delegation (443 by default: Cloudflare does not
    # proxy 8448); a Docker host may publish the proxy on another port.
    from components.platform.targets import target_of

    return {"m.server": f"{cfg.host('matrix')}:{target_of(cfg).public_port(cfg.scheme)}"}


def well_known_client(cfg: StackConfig, extra: dict[str, object]) -> dict[str, object]:
    doc: dict[str, object] = {"m.homeserver": {"base_url": cfg.url("matrix")}}
    doc.update(extra)
    return doc


def render_nginx(
    cfg: StackConfig,
    topo: Topology,
    address: dict[str, str],
    *,
    sites: list[Site],
    well_known_client_extra: dict[str, object],
    resolver: str | None = None,
) -> str:
    routing = plan(topo, address)
    syn = cfg.synapse
    lines: list[str] = [
        "# Rendered by matrix-stack from the worker table; do not edit by hand.",
        "worker_processes auto;",
        "pid /tmp/nginx.pid;",
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
        *_real_ip(cfg),
        "",
        "map $http_upgrade $connection_upgrade {",
        "    default upgrade;",
        "    '' close;",
        "}",
        # Sync stickiness: the user's localpart from the access token (syt_<localpart>_...), or
        # the whole token when it is not a Synapse token.
        "map $http_authorization $synapse_token_user {",
        "    default $http_authorization;",
        '    "~*^Bearer\\s+syt_(?<synapse_localpart>\\S+)_[A-Za-z0-9]+_[A-Za-z0-9]+$" $synapse_localpart;',
        "}",
        "map $synapse_token_user $synapse_user {",
        "    default $synapse_token_user;",
        "    '' $arg_access_token;",
        "}",
        "map $uri $synapse_room {",
        "    default $uri;",
        '    "~^/_matrix/client/[^/]+/rooms/(?<synapse_room_id>[^/]+)" $synapse_room_id;',
        '    "~^/_matrix/client/[^/]+/(join|knock)/(?<synapse_join_target>[^/]+)" $synapse_join_target;',
        "}",
    ]
    if syn.federation.deny:
        http += ["map $http_authorization $synapse_origin_denied {", "    default 0;"]
        for denied in sorted(syn.federation.deny):
            escaped = denied.replace(".", "\\.")
            # An origin may carry a port (evil.example:8448): it is still that server.
            http.append(f'    "~*X-Matrix\\s.*origin=\\"?{escaped}(:[0-9]+)?\\"?(,|\\s|$)" 1;')
        http.append("}")
    for var, (reads, writes) in sorted(routing.method_maps.items()):
        http += [f"map $request_method {var} {{", f"    default {writes};", f"    GET {reads};",
                 f"    HEAD {reads};", "}"]
    if resolver:
        http.append(f"resolver {resolver} valid=10s;")
    for pool in routing.upstreams.values():
        http.append(f"upstream {pool.name} {{")
        if pool.balance in _HASH_KEYS:
            http.append(f"    hash {_HASH_KEYS[pool.balance]} consistent;")
        else:
            http.append("    least_conn;")
        http += [f"    server {address_port} max_fails=0;" for address_port in pool.servers]
        http.append("    keepalive 32;")
        http.append("}")
    http.append("")

    # ---- the Matrix host: client and federation API
    matrix_host = cfg.host("matrix")
    well_known = [
        *_json_location("/.well-known/matrix/server", well_known_server(cfg)),
        *_json_location("/.well-known/matrix/client", well_known_client(cfg, well_known_client_extra)),
    ]
    server: list[str] = [*_listen(cfg, matrix_host), f"server_name {matrix_host};",
                         f"client_max_body_size {syn.max_upload_size};",
                         "set $synapse_route none;"]
    if syn.federation.deny:
        server += ["if ($synapse_origin_denied) {", "    return 403;", "}"]
    server += well_known
    server += _delegated_auth(cfg, address)
    for loc in routing.locations:
        body = [f"set $synapse_route {loc.group};"]
        if loc.admin:
            body += _admin_acl(syn.admin_api_allowlist)
        body += _proxy_block(loc.upstream)
        server.append(f"location ~* {loc.pattern} {{")
        server += _indent(body)
        server.append("}")
    # Admin API: reachable only from the allowlist (nobody by default).
    server.append("location ~* ^/_synapse/admin/ {")
    server += _indent(["set $synapse_route main;", *_admin_acl(syn.admin_api_allowlist),
                       *_proxy_block("synapse_main")])
    server.append("}")
    # Everything else Synapse serves publicly goes to main; replication and metrics never do.
    server.append("location ~* ^(/_matrix|/_synapse/client) {")
    server += _indent(["set $synapse_route main;", *_proxy_block("synapse_main")])
    server.append("}")
    server += ["location / {", "    return 404;", "}"]
    http += ["server {", *_indent(server), "}"]

    # ---- the server name, when delegated to another host: only the well-known documents
    if cfg.server_name != matrix_host:
        delegated = [*_listen(cfg, cfg.server_name), f"server_name {cfg.server_name};",
                     "set $synapse_route well-known;", *well_known, "location / {", "    return 404;", "}"]
        http += ["", "server {", *_indent(delegated), "}"]

    # ---- other public sites (Element Call, ntfy, Element Web ...)
    for site in sorted(sites, key=lambda s: s.hostname):
        body = [*_listen(cfg, site.hostname), f"server_name {site.hostname};",
                f"client_max_body_size {site.max_body};", f"set $synapse_route site-{site.upstream_service};"]
        for path, document in sorted(site.static_json.items()):
            body += _json_location(path, json.loads(document))
        upstream = f"{address.get(site.upstream_service, site.upstream_service)}:{site.upstream_port}"
        body += ["location / {", *_indent(_proxy_block(upstream, websockets=site.websockets)), "}"]
        http += ["", "server {", *_indent(body), "}"]

    http += _plain_http_server(cfg)
    # Private listener: health for the target's checks, stub_status for metrics scraping.
    http += ["", "server {", f"    listen {PROXY_STATUS_PORT};", "    access_log off;",
             "    location = /health {", "        return 200 'OK';", "    }",
             "    location = /stub_status {", "        stub_status;", "    }", "}"]
    lines += _indent(http)
    lines.append("}")
    return "\n".join(lines) + "\n"
