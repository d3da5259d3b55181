"""The edge: the routing proxy (nginx) every public site goes through. It serves the Matrix host
with the routes the parts add (Synapse's worker routing, MAS's logins), the well-known documents,
each part's site, the ACME challenges and the certificates the TLS part provides; it reads all
of that from the view."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pulumi

from components import image_facts
from components.part import CLUSTER, BuildContext, Component, Contribution, MetricsTarget, Part, Writer
from components.platform.spec import Edge as EdgeHosts
from components.platform.spec import File, Port, Service, Site, Volume
from components.view import StackView
from config import images
from config.model import StackConfig

from . import render

# Its name and component label from the days it was the Synapse cluster's own proxy: a change
# would replace its container, and a Deployment's selector cannot change at all.
PROXY_SERVICE = "synapse-proxy"
COMPONENT = "synapse"


class EdgeProxy(Part):
    name = "edge"
    # After TLS, which hands it the certificate files and the ACME volumes.
    stage = CLUSTER
    reads = ("target", "server_name", "hostnames", "tls", "cloudflare")
    # Its resources were the Synapse cluster's children before the edge became a part of its own.
    formerly_part = "synapse"

    def edge_service(self, cfg: StackConfig) -> str | None:
        return PROXY_SERVICE

    def metrics_targets(self, cfg: StackConfig) -> list[MetricsTarget]:
        # nginx's stub_status on its private listener; nginx-prometheus-exporter reads it.
        return [MetricsTarget(PROXY_SERVICE, render.PROXY_STATUS_PORT, "/stub_status", role="edge", job="edge",
                              exporter="nginx")]

    def writers(self, cfg: StackConfig) -> list[Writer]:
        # Stopped during a restore, so no client reaches a half-restored server.
        return [Writer(PROXY_SERVICE, False)]

    def services(self, cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
        return [proxy_service(cfg, view, [], [], False)]

    def build(self, cfg: StackConfig, ctx: BuildContext) -> Contribution:
        component = Component("Edge", self.name)
        files: list[File] = []
        volumes: list[Volume] = []
        watches_acme = False
        for built in ctx.built:
            files += built.proxy_files
            volumes += built.proxy_volumes
            watches_acme = watches_acme or built.proxy_watches_acme
        component.register_outputs({})
        return Contribution(parent=component, services=[proxy_service(cfg, ctx.view, files, volumes, watches_acme)])


def proxy_service(cfg: StackConfig, view: StackView, files: Sequence[File], volumes: Sequence[Volume],
                  watches_acme: bool) -> Service:
    """The proxy, with the certificate files and volumes the TLS part hands it."""
    target = view.target
    served = view.sites(cfg)
    # A site on another Docker host is dialled at that host's address (a published port).
    upstreams: dict[str, str] = {}
    for site in served:
        host, _port, crosses = target.reach(PROXY_SERVICE, site.upstream_service, site.upstream_port)
        if crosses:
            upstreams[site.upstream_service] = host
    ports = [Port("http", render.PROXY_HTTP_PORT, public=True, host_port=target.proxy_host_port("http"))]
    if view.proxy_terminates_tls:
        ports.append(Port("https", render.PROXY_HTTPS_PORT, public=True, host_port=target.proxy_host_port("https")))
    ports.append(Port("status", render.PROXY_STATUS_PORT))
    # nginx resolves upstream names at load: the names it dials (the parts' upstream pools and
    # the sites), which its run script waits for and follows to new addresses.
    upstream_hosts = tuple(sorted({h for routes in view.edge_routes for h in routes.upstream_hosts}
                                  | {upstreams.get(site.upstream_service, site.upstream_service) for site in served}))
    # nginx.conf is live: a topology or routing change reaches the running proxy, which tests
    # it and reloads; only a change of the run script, the certificates or the image restarts it.
    conf = File(render.NGINX_CONF, render.render_nginx(cfg, view, served, upstreams, upstream_hosts), live=True)
    run_script = File(render.PROXY_RUN, render.proxy_run_script(render.NGINX_CONF, watches_acme), mode=0o555)
    routed = {name for routes in view.edge_routes for name in routes.routed} | {s.upstream_service for s in served}
    return Service(
        name=PROXY_SERVICE,
        component=COMPONENT,
        image=images.NGINX,
        entrypoint=("/bin/sh",),
        args=(render.PROXY_RUN,),
        files=[conf, run_script, *files],
        volumes=list(volumes),
        ports=ports,
        # Healthy only while nginx serves the current nginx.conf with every upstream's current
        # address (Kubernetes probes the status path: its Services keep their addresses).
        health=dataclasses.replace(image_facts.http_check(images.NGINX, render.PROXY_STATUS_PORT, "/health"),
                                   command=("/bin/sh", render.PROXY_RUN, "health")),
        user=image_facts.user(images.NGINX),
        read_only_root=True,
        writable_paths=("/tmp",),
        waits=tuple(wait for routes in view.edge_routes for wait in routes.waits),
        routes_to=tuple(sorted(routed)),
        live_applied_url=f"http://{PROXY_SERVICE}:{render.PROXY_STATUS_PORT}{render.APPLIED_PATH}",
        reaches=tuple((site.upstream_service, site.upstream_port) for site in served),
        edge=EdgeHosts(_edge_hostnames(cfg, served), tls=cfg.tls_mode != "none"),
        scalable=True,
        # Two, so a node drain or a rollout never leaves the public sites unserved (its budget
        # keeps one). A Docker host runs one container per service and ignores the count.
        replicas=2,
    )


def _edge_hostnames(cfg: StackConfig, served: list[Site]) -> tuple[str, ...]:
    """The proxy's hostnames in its server blocks' order: the Matrix host, the server name when
    delegated, then the sites by name."""
    names = [cfg.host("matrix")]
    if cfg.server_name not in names:
        names.append(cfg.server_name)
    return tuple(names + [s.hostname for s in sorted(served, key=lambda s: s.hostname) if s.hostname not in names])
