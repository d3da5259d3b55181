"""The shared vocabulary of the routing proxy's nginx text: the parts that add routes to it
(components/part.EdgeRoutes) and the edge that renders it speak it alike. Pure."""

from __future__ import annotations

import json

# The variable every route sets: the access log names the route that served each request.
ROUTE_VARIABLE = "$synapse_route"

CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS"),
    ("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization"),
)


def quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def json_location(path: str, document: dict[str, object]) -> list[str]:
    body = json.dumps(document, sort_keys=True, separators=(",", ":"))
    lines = [f"location = {path} {{", "    default_type application/json;"]
    lines += [f'    add_header {k} "{v}" always;' for k, v in CORS_HEADERS]
    lines += [f"    return 200 {quote(body)};", "}"]
    return lines


def indent(lines: list[str], depth: int = 1) -> list[str]:
    pad = "    " * depth
    return [pad + line if line else line for line in lines]


def proxy_block(upstream: str, *, websockets: bool = False, timeout: str = "300s") -> list[str]:
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


def set_route(name: str) -> str:
    return f"set {ROUTE_VARIABLE} {name};"
