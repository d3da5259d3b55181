"""What every optional part of the stack (Element Call, ntfy, coturn, Element Web) hands back to
the stack: the public sites the routing proxy serves, homeserver keys, client well-known keys
and secret files for Synapse, plus public URLs for the stack outputs.

The parts are built before the Synapse cluster, so these travel one way: parts -> Inputs ->
SynapseCluster. Sites on another Docker host are reached through a published port
(placement.reach), which has to be known before the part's containers are declared.
"""

from __future__ import annotations

from typing import Any

import pulumi

from components.platform import placement
from components.platform.spec import Site
from components.synapse.services import PROXY_SERVICE
from config.model import StackConfig


class Part(pulumi.ComponentResource):
    """A ComponentResource with the contributions the stack collects into synapse Inputs."""

    def __init__(self, type_token: str, name: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__(type_token, name, None, opts)
        self.sites: list[Site] = []
        self.site_addresses: dict[str, str] = {}
        self.homeserver: dict[str, Any] = {}
        self.well_known_client: dict[str, object] = {}
        self.secret_files: dict[str, pulumi.Input[str]] = {}
        self.urls: dict[str, str] = {}
        self.services: list[Any] = []

    def expose(self, cfg: StackConfig, platform: Any, site: Site) -> None:
        """Serve `site` from the routing proxy; publish its port if it lives on another host."""
        host, _port, crosses = placement.reach(cfg, PROXY_SERVICE, site.upstream_service, site.upstream_port)
        if crosses:
            self.site_addresses[site.upstream_service] = host
            ports = getattr(platform, "cross_host_ports", None)
            if ports is not None:
                ports.add((site.upstream_service, site.upstream_port))
        self.sites.append(site)


def ws_url(http_url: str) -> str:
    """The WebSocket URL of a host: wss:// behind TLS, ws:// on a plain-HTTP local stack."""
    if http_url.startswith("https://"):
        return "wss://" + http_url[len("https://"):]
    return "ws://" + http_url[len("http://"):]


def merge_homeserver(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge one part's homeserver keys into the collected ones: dicts deeply, lists as a union
    in order (two parts may both widen ip_range_whitelist), anything else last one wins."""
    for key, value in extra.items():
        current = into.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merge_homeserver(current, value)
        elif isinstance(value, list) and isinstance(current, list):
            into[key] = current + [v for v in value if v not in current]
        else:
            into[key] = value
