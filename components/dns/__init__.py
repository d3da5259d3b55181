"""PublicDns: the stack's Cloudflare records, through an explicit provider and a zone looked up
by name.

Cloudflare's SDK loads every module it has on import (seconds of CPU), so it is imported where a
resource is declared: the checks and plans in `records` run for every stack, Cloudflare on or off."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pulumi

from config.model import StackConfig

from . import records

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


class PublicDns(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        provider: cloudflare.Provider,
        app_cname: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        import pulumi_cloudflare as cloudflare

        super().__init__("matrix-stack:index:PublicDns", name, None, opts)
        assert cfg.cloudflare.zone
        zone = cloudflare.get_zone_output(
            filter={"match": "all", "name": cfg.cloudflare.zone},
            opts=pulumi.InvokeOptions(provider=provider),
        )
        self.zone_id = zone.zone_id
        comment = f"managed by matrix-stack {pulumi.get_stack()}"
        self.records: dict[str, cloudflare.DnsRecord] = {}
        for record in records.plan(cfg):
            content = record.content if record.content is not None else app_cname
            if content is None:
                continue  # a Pages CNAME without a project: ElementWeb was not built
            resource = f"{name}-{record.key}-{record.type.lower()}"
            self.records[resource] = cloudflare.DnsRecord(
                resource,
                zone_id=self.zone_id,
                name=record.name,
                type=record.type,
                content=content,
                ttl=1,  # automatic; required by the v6 provider
                proxied=record.proxied,
                comment=comment,
                # A type change for one name must delete the old record first.
                opts=pulumi.ResourceOptions(parent=self, provider=provider, delete_before_replace=True),
            )
        self.register_outputs({"zone_id": self.zone_id, "records": sorted(self.records)})
