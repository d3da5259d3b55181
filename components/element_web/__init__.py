"""ElementWeb: the Element Web client, as a container behind the proxy or as a Cloudflare Pages
project built from a fork (seed 001)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pulumi

from components import image_facts
from components.part import Part
from components.platform.spec import File, Port, Service, Site
from config.model import StackConfig

from . import render

if TYPE_CHECKING:
    import pulumi_cloudflare as cloudflare

COMPONENT = "element-web"


class ElementWeb(Part):
    def __init__(self, name: str, cfg: StackConfig, platform: Any,
                 provider: cloudflare.Provider | None = None, opts: pulumi.ResourceOptions | None = None):
        super().__init__("matrix-stack:index:ElementWeb", name, opts)
        web = cfg.element_web
        # Where the app host's DNS record points: None = the proxy (A/AAAA), else a CNAME target.
        self.cname_target: pulumi.Output[str] | None = None
        if web.mode == "pages":
            # Cloudflare's SDK is large and eager: only a Pages stack imports it.
            import pulumi_cloudflare as cloudflare

            assert provider is not None and web.source is not None and cfg.cloudflare.account_id
            account = cfg.cloudflare.account_id
            child = pulumi.ResourceOptions(parent=self, provider=provider)
            env = render.build_env(cfg)
            source = web.source
            project = cloudflare.PagesProject(
                f"{name}-project",
                account_id=account,
                name=render.project_name(cfg, pulumi.get_stack()),
                production_branch=source.branch,
                build_config=cloudflare.PagesProjectBuildConfigArgs(
                    build_command=render.build_command(), destination_dir=render.OUTPUT_DIR),
                source=cloudflare.PagesProjectSourceArgs(type="github", config=cloudflare.PagesProjectSourceConfigArgs(
                    owner=source.owner,
                    repo_name=source.repo,
                    production_branch=source.branch,
                    deployments_enabled=True,
                    production_deployments_enabled=True,
                    pr_comments_enabled=False,
                    # Previews would carry this stack's config.json to every branch.
                    preview_deployment_setting="none",
                )),
                deployment_configs=cloudflare.PagesProjectDeploymentConfigsArgs(
                    production=cloudflare.PagesProjectDeploymentConfigsProductionArgs(env_vars={
                        k: cloudflare.PagesProjectDeploymentConfigsProductionEnvVarsArgs(type=v["type"], value=v["value"])
                        for k, v in env.items()}),
                    preview=cloudflare.PagesProjectDeploymentConfigsPreviewArgs(env_vars={
                        k: cloudflare.PagesProjectDeploymentConfigsPreviewEnvVarsArgs(type=v["type"], value=v["value"])
                        for k, v in env.items()}),
                ),
                opts=child,
            )
            # PagesDomain creates no DNS record: the DNS component adds the CNAME.
            cloudflare.PagesDomain(f"{name}-domain", account_id=account, name=cfg.host("app"),
                                   project_name=project.name, opts=child)
            self.cname_target = project.subdomain
        else:
            service = Service(
                name=render.SERVICE,
                component=COMPONENT,
                image=web.image,
                env={"ELEMENT_WEB_PORT": str(render.PORT)},
                files=[File(render.CONFIG, render.config_json(cfg))],
                ports=[Port("http", render.PORT)],
                health=image_facts.http_check(web.image, render.PORT),
                user=image_facts.user(web.image),
                capabilities_add=image_facts.capabilities(web.image),
            )
            self.services = [service]
            self.expose(cfg, platform, Site(cfg.host("app"), render.SERVICE, render.PORT))
            platform.run(self.services, parent=self)
        self.urls = {"element_web_url": cfg.url("app")}
        self.register_outputs(dict(self.urls))
