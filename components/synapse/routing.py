"""Synapse's routes on the routing proxy: which process serves each request, as the nginx text
the edge places in the Matrix host (components/part.EdgeRoutes). Pure.

Route groups hold the endpoint regexes of element-hq/synapse docs/workers.md (matched
case-insensitively, as Synapse's own docker nginx does). Which process serves a group comes from
the worker table: the most dedicated role present that lists the group, else a fallback role
(generic), else main. Locations are emitted in ROUTE_GROUPS order, most specific first, and
anything unmatched under /_matrix or /_synapse/client falls through to main.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.nginx import indent, proxy_block, set_route, upstream_block
from components.part import EdgeRoutes
from components.platform.spec import Wait
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


# ---------------------------------------------------------------- the proxy's routes


_HASH_KEYS = {"user": "$synapse_user", "room": "$synapse_room", "source_ip": "$remote_addr"}
# Before any other part's routes on the Matrix host, after MAS's logins (components/mas).
ROUTES_ORDER = 10


def _admin_acl(allowlist: list[str]) -> list[str]:
    return [f"allow {cidr};" for cidr in allowlist] + ["deny all;"]


def _http(cfg: StackConfig, routing: RoutingPlan) -> list[str]:
    """The http-block lines: the sticky maps the pools hash on, and the pools."""
    http: list[str] = [
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
    syn = cfg.synapse
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
    for pool in routing.upstreams.values():
        balance = f"hash {_HASH_KEYS[pool.balance]} consistent;" if pool.balance in _HASH_KEYS else "least_conn;"
        http += upstream_block(pool.name, pool.servers, balance)
    return http


def _locations(cfg: StackConfig, routing: RoutingPlan) -> list[str]:
    """Each route group's locations, then the admin API and main's catch-all."""
    syn = cfg.synapse
    server: list[str] = []
    for loc in routing.locations:
        body = [set_route(loc.group)]
        if loc.admin:
            body += _admin_acl(syn.admin_api_allowlist)
        body += proxy_block(loc.upstream)
        server.append(f"location ~* {loc.pattern} {{")
        server += indent(body)
        server.append("}")
    # Admin API: reachable only from the allowlist (nobody by default).
    server.append("location ~* ^/_synapse/admin/ {")
    server += indent([set_route("main"), *_admin_acl(syn.admin_api_allowlist), *proxy_block("synapse_main")])
    server.append("}")
    # Everything else Synapse serves publicly goes to main; replication and metrics never do.
    server.append("location ~* ^(/_matrix|/_synapse/client) {")
    server += indent([set_route("main"), *proxy_block("synapse_main")])
    server.append("}")
    return server


def edge_routes(cfg: StackConfig, topo: Topology, address: dict[str, str], waits: tuple[Wait, ...]) -> EdgeRoutes:
    """The Matrix host's routes on the proxy: every route group to the process that serves it."""
    routing = plan(topo, address)
    syn = cfg.synapse
    preamble = [f"client_max_body_size {syn.max_upload_size};", set_route("none")]
    if syn.federation.deny:
        preamble += ["if ($synapse_origin_denied) {", "    return 403;", "}"]
    pools = routing.upstreams.values()
    return EdgeRoutes(
        "matrix", ROUTES_ORDER,
        http=tuple(_http(cfg, routing)),
        preamble=tuple(preamble),
        locations=tuple(_locations(cfg, routing)),
        upstream_hosts=tuple(sorted({server.rsplit(":", 1)[0] for pool in pools for server in pool.servers})),
        routed=tuple(p.name for p in topo.processes),
        waits=waits,
    )
