"""The shared vocabulary of the routing proxy's nginx text: the parts that add routes to it
(components/part.EdgeRoutes) and the edge that renders it speak it alike. Pure."""

from __future__ import annotations

import json
from collections.abc import Sequence

# The variable every route sets: the access log names the route that served each request.
ROUTE_VARIABLE = "$synapse_route"

CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS"),
    ("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization"),
)


# Mozilla's "intermediate" TLS configuration (ssl-config.mozilla.org, v5.7) without the DHE
# suites, which would need a dhparam file: TLS 1.3, and for TLS 1.2 forward-secret AEAD suites.
TLS_PROTOCOLS = "TLSv1.2 TLSv1.3"
TLS_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))
# Two years, as the HSTS preload list asks; no includeSubDomains: the server name may be an apex
# domain whose other hosts the stack does not serve.
HSTS_MAX_AGE = 63072000

Header = tuple[str, str]


def quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def security_headers(*, hsts: bool, frame_ancestors: tuple[str, ...] | None) -> tuple[Header, ...]:
    """The response headers of a public site: HSTS when clients reach it over HTTPS, no MIME
    sniffing, no full URL in the Referer of cross-origin requests, and no framing by other pages
    (clickjacking) unless `frame_ancestors` names the origins that may embed it."""
    headers: list[Header] = []
    if hsts:
        headers.append(("Strict-Transport-Security", f"max-age={HSTS_MAX_AGE}"))
    headers += [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "strict-origin-when-cross-origin")]
    if frame_ancestors is None:
        headers += [("X-Frame-Options", "DENY"), ("Content-Security-Policy", "frame-ancestors 'none'")]
    else:
        # No X-Frame-Options: it cannot name another origin, and CSP's frame-ancestors overrides it.
        headers.append(("Content-Security-Policy", " ".join(("frame-ancestors", "'self'", *frame_ancestors))))
    return tuple(headers)


def add_headers(headers: Sequence[Header]) -> list[str]:
    """`add_header` lines, on every status (`always`: error responses too). A block with its own
    add_header drops every inherited one, so each block that adds any repeats the site's."""
    return [f'add_header {name} "{value}" always;' for name, value in headers]


def json_location(path: str, document: dict[str, object], headers: Sequence[Header] = ()) -> list[str]:
    """A location answering a JSON document, with CORS and the server's `headers` (which this
    block's own add_header lines would otherwise drop)."""
    body = json.dumps(document, sort_keys=True, separators=(",", ":"))
    lines = [f"location = {path} {{", "    default_type application/json;"]
    lines += indent(add_headers((*headers, *CORS_HEADERS)))
    lines += [f"    return 200 {quote(body)};", "}"]
    return lines


def indent(lines: list[str], depth: int = 1) -> list[str]:
    pad = "    " * depth
    return [pad + line if line else line for line in lines]


# A peer on the proxy's network accepts a connection within milliseconds. An address that
# vanished (a replaced container's, until the proxy has reloaded) answers nothing, and nginx's
# default would hold the request 60 s before it tries the pool's next server. Three seconds still
# let a busy peer's SYN be resent once (Linux resends after 1 s, then 3 s).
CONNECT_TIMEOUT = "3s"


def upstream_block(name: str, servers: Sequence[str], balance: str = "least_conn;") -> list[str]:
    """A pool of `servers` ("host:port"), chosen by `balance`. Every server stays a candidate
    (`max_fails=0`): nginx would otherwise refuse a one-server pool for 10 s after one failed
    connection. A server that fails to connect costs a request CONNECT_TIMEOUT at most: nginx
    then retries it on the pool's next server (proxy_next_upstream's default, `error timeout`,
    and for any method, since nothing was sent)."""
    return [f"upstream {name} {{", f"    {balance}",
            *(f"    server {address_port} max_fails=0;" for address_port in servers),
            "    keepalive 32;", "}"]


def proxy_block(upstream: str, *, websockets: bool = False, timeout: str = "300s") -> list[str]:
    # No URI after the upstream: nginx must pass the path untouched or federation signatures
    # break (Synapse's reverse proxy docs).
    lines = [
        f"proxy_pass http://{upstream};",
        f"proxy_connect_timeout {CONNECT_TIMEOUT};",
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


def set_route(name: str) -> str:
    return f"set {ROUTE_VARIABLE} {name};"
