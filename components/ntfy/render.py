"""ntfy's server.yml and the Synapse side of push, rendered from the typed config. Pure.

ntfy is both the UnifiedPush distributor and a Matrix push gateway
(`<base-url>/_matrix/push/v1/notify`). The instance is private (deny-all) except for the one
rule UnifiedPush needs: anyone may write, never read, `up*` topics, so Synapse can push
without an account (element-call-and-ntfy.md, 8.3).
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from components import yaml_text
from components.network import PRIVATE_RANGES
from config import images
from config.model import StackConfig

SERVICE = "ntfy"
PORT = 8080  # not :80: the container runs without CAP_NET_BIND_SERVICE
# ntfy's Prometheus endpoint on a listener of its own (metrics-listen-http, which implies
# enable-metrics; cmd/serve.go and docs/config.md at v2.13.0): /metrics is then not served on
# PORT, which the proxy publishes.
METRICS_PORT = 9095
METRICS_JOB = "ntfy"
CONFIG = images.config_path(images.NTFY)
CACHE_DIR = "/var/cache/ntfy"
AUTH_DIR = "/var/lib/ntfy"
ADMIN_USER = "admin"
PUSH_PATH = "/_matrix/push/v1/notify"

# Anonymous write-only on up* topics. Declarative auth-access/auth-users arrived after ntfy v2.13
# (docs of July 2025); the pinned image is v2.14.0. `*` is ntfy's name for "everyone".
UNIFIEDPUSH_ACCESS = "*:up*:write-only"


def base_url(cfg: StackConfig) -> str:
    # The push gateway rejects every pushkey that does not start with base-url + "/": this must
    # be exactly the public URL clients see, with no trailing slash and no path.
    return cfg.url("ntfy")


def server_config(cfg: StackConfig) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "base-url": base_url(cfg),
        "listen-http": f":{PORT}",
        # Behind the routing proxy: rate-limit by X-Forwarded-For, not the proxy's address.
        "behind-proxy": True,
        "cache-file": f"{CACHE_DIR}/cache.db",
        "auth-file": f"{AUTH_DIR}/user.db",
        "auth-default-access": "deny-all",
        "auth-access": [UNIFIEDPUSH_ACCESS, *alerts_access(cfg)],
        "enable-login": True,
        "enable-signup": False,
        # With a listener of its own the public one serves no /metrics (server/server.go at
        # v2.13.0: the handler goes to one or the other); metrics-listen-http implies the switch.
        "enable-metrics": True,
        "metrics-listen-http": f":{METRICS_PORT}",
    }
    upstream = cfg.ntfy.upstream_base_url
    if upstream:
        # ntfy.sh relays poll requests to iOS devices (message id and a topic hash only).
        conf["upstream-base-url"] = upstream
    return conf


def server_yml(cfg: StackConfig, auth_users: str) -> str:
    """The config file, with its users (auth-users: name, bcrypt hash, role; `auth_users` as
    comma-joined entries, see auth_users). ntfy reads
    auth-users from its config file, a flag or NTFY_AUTH_USERS, and has no file option of its own
    (config/images.py), so the config file is a secret file."""
    return yaml_text.dump({**server_config(cfg), "auth-users": auth_users.split(",")}, sort_keys=False, default_flow_style=False)


def auth_users(bcrypt_hash: str, alerts_hash: str | None = None, alerts_user: str = "") -> str:
    """The auth-users entries, comma-joined (a bcrypt hash has no comma): the admin, and the user that publishes the stack's alerts when monitoring
    is on (a plain user: it may only write its topic, alerts_access)."""
    users = [f"{ADMIN_USER}:{bcrypt_hash}:admin"]
    if alerts_hash is not None:
        users.append(f"{alerts_user}:{alerts_hash}:user")
    return ",".join(users)


def alerts_access(cfg: StackConfig) -> list[str]:
    """Alertmanager's user writes the alerts topic and nothing else."""
    if not cfg.monitoring.enabled:
        return []
    return [f"{cfg.monitoring.ntfy_user}:{cfg.monitoring.ntfy_topic}:write-only"]


def push_gateway_url(cfg: StackConfig) -> str:
    return base_url(cfg) + PUSH_PATH


def private_ranges(cfg: StackConfig) -> list[str]:
    """Private addresses ntfy's host name may resolve to, as Synapse sees it.

    Synapse pushes with its blocklist-enforcing client, and its default ip_range_blacklist holds
    every private range, so a gateway on a private address is refused. Known private addresses:
    ntfy.private_address (split-horizon DNS, a LAN) and a private cloudflare.origin_ip (the
    address the ntfy record points at). Only those are whitelisted, never whole ranges.
    """
    found: list[str] = []
    candidates = [cfg.ntfy.private_address]
    if cfg.cloudflare.enabled:
        candidates += [cfg.cloudflare.origin_ip, cfg.cloudflare.origin_ipv6]
    for value in candidates:
        if not value:
            continue
        network = ipaddress.ip_network(value, strict=False)
        if _blocked(network) and str(network) not in found:
            found.append(str(network))
    return found


def _blocked(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Inside Synapse's default ip_range_blacklist (which is wider than "private": CGNAT,
    documentation ranges...)."""
    for blocked in _blocklist():
        if blocked.version == network.version and network.subnet_of(blocked):  # type: ignore[arg-type]
            return True
    return False


@functools.cache
def _blocklist() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in PRIVATE_RANGES)


def homeserver(cfg: StackConfig) -> dict[str, Any]:
    ranges = private_ranges(cfg)
    return {"ip_range_whitelist": ranges} if ranges else {}

