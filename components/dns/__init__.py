"""Public DNS: the stack's Cloudflare records (the view's, from every part's endpoints),
through the one explicit provider and a zone looked up by name.

Cloudflare's SDK loads every module it has on import (seconds of CPU), so it is imported where a
resource is declared: the checks and the record plan (components/view/records.py) run for every stack, Cloudflare on or
off."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pulumi

from components.part import AFTER_CLUSTER, BuildContext, Component, Contribution, Part
from components.view.records import proxy_http
from config.checks import Finding
from config.model import StackConfig

CLOUDFLARE_UPLOAD_LIMIT_MB = 100  # request bodies above this get 413 at the edge (Free and Pro)

if TYPE_CHECKING:
    import pulumi_cloudflare as cloudflare


def provider(cfg: StackConfig) -> cloudflare.Provider:
    """The one Cloudflare provider: default providers are disabled for the project (Pulumi.yaml)."""
    import pulumi_cloudflare as cloudflare

    assert cfg.cloudflare_api_token is not None
    return cloudflare.Provider(
        "cloudflare",
        api_token=pulumi.Output.secret(cfg.cloudflare_api_token.get_secret_value()),
    )


class PublicDns(Part):
    name = "dns"
    switches = ("cloudflare.enabled",)
    # After the other parts: a CNAME's target (the Pages project) is one of their resources.
    stage = AFTER_CLUSTER
    reads = ("cloudflare",)

    def enabled(self, cfg: StackConfig) -> bool:
        return cfg.cloudflare.enabled

    def build(self, cfg: StackConfig, ctx: BuildContext) -> Contribution:
        import pulumi_cloudflare as cloudflare

        provider = ctx.cloudflare_provider
        component = Component("PublicDns", self.name)
        assert cfg.cloudflare.zone and provider is not None
        zone = cloudflare.get_zone_output(
            filter={"match": "all", "name": cfg.cloudflare.zone},
            opts=pulumi.InvokeOptions(provider=provider),
        )
        cname_targets = {key: target for built in ctx.built for key, target in built.cname_targets.items()}
        comment = f"managed by matrix-stack {pulumi.get_stack()}"
        names: dict[str, cloudflare.DnsRecord] = {}
        for record in ctx.view.records:
            content = record.content if record.content is not None else cname_targets.get(record.key)
            if content is None:
                continue  # a CNAME whose target no part provided
            resource = f"{self.name}-{record.key}-{record.type.lower()}"
            names[resource] = cloudflare.DnsRecord(
                resource,
                zone_id=zone.zone_id,
                name=record.name,
                type=record.type,
                content=content,
                ttl=1,  # automatic; required by the v6 provider
                proxied=record.proxied,
                comment=comment,
                # A type change for one name must delete the old record first.
                opts=pulumi.ResourceOptions(parent=component, provider=provider, delete_before_replace=True),
            )
        component.register_outputs({"zone_id": zone.zone_id, "records": sorted(names)})
        return Contribution(parent=component, outputs={"dns_records": sorted(r.name for r in ctx.view.records)})


def _megabytes(size: str) -> int:
    number, unit = int(size[:-1]), size[-1]
    return number * {"K": 1, "M": 1024, "G": 1024 * 1024}[unit] // 1024


def upload_limit_check(cfg: StackConfig) -> list[Finding]:
    """Cloudflare's proxy refuses request bodies above its plan's limit."""
    if not cfg.cloudflare.enabled:
        return []
    problems: list[Finding] = []
    if proxy_http(cfg) and _megabytes(cfg.synapse.max_upload_size) > CLOUDFLARE_UPLOAD_LIMIT_MB:
        problems.append(("synapse.max_upload_size", cfg.synapse.max_upload_size,
                         f"at most {CLOUDFLARE_UPLOAD_LIMIT_MB}M while Cloudflare proxies the Matrix host "
                         "(it answers 413 above that); or set cloudflare.proxy_http: false"))
    return problems
