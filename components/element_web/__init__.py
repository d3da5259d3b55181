"""Element Web: the client as a container behind the proxy, or as a Cloudflare Pages project
built from a fork (seed 001)."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from components import image_facts
from components.part import BuildContext, Component, Contribution, Endpoint, Part
from components.platform.spec import File, Port, Service
from components.view import StackView
from config.model import StackConfig

from . import render

COMPONENT = "element-web"


def _pages(cfg: StackConfig) -> bool:
    return cfg.element_web.mode == "pages"


class ElementWeb(Part):
    name = "element-web"
    switches = ("element_web.enabled", "element_web.mode")
    reads = ("element_web",)

    def enabled(self, cfg: StackConfig) -> bool:
        return cfg.element_web.enabled

    def endpoints(self, cfg: StackConfig) -> list[Endpoint]:
        if _pages(cfg):
            # Cloudflare Pages serves it: a CNAME to the project, never the proxy.
            return [Endpoint("app", served_by_proxy=False, cname=True)]
        return [Endpoint("app", render.SERVICE, render.PORT)]

    def services(self, cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
        if _pages(cfg):
            return []
        web = cfg.element_web
        return [Service(
            name=render.SERVICE,
            component=COMPONENT,
            image=web.image,
            env={"ELEMENT_WEB_PORT": str(render.PORT)},
            files=[File(render.CONFIG, render.config_json(cfg))],
            ports=[Port("http", render.PORT)],
            health=image_facts.http_check(web.image, render.PORT),
            user=image_facts.user(web.image),
            capabilities_add=image_facts.capabilities(web.image),
            # Its Dockerfile moves nginx's pid to /tmp and makes /var/cache/nginx and /etc/nginx the
            # nginx user's: the entrypoint renders ELEMENT_WEB_PORT into /etc/nginx/conf.d from its
            # template (nginx's 20-envsubst-on-templates.sh), and nginx keeps temp files in the cache.
            read_only_root=True,
            writable_paths=("/tmp", "/etc/nginx/conf.d", "/var/cache/nginx"),
        )]

    def build(self, cfg: StackConfig, ctx: BuildContext) -> Contribution:
        component = Component("ElementWeb", self.name)
        contribution = Contribution(parent=component, services=self.services(cfg, ctx.view, {}),
                                    outputs={"element_web_url": cfg.url("app")})
        if _pages(cfg):
            contribution.cname_targets["app"] = _pages_project(cfg, component, ctx.cloudflare_provider)
        component.register_outputs(dict(contribution.outputs))
        return contribution


def _pages_project(cfg: StackConfig, component: Component, provider: object) -> pulumi.Output[str]:
    """The Pages project and its custom domain; returns the project's pages.dev subdomain."""
    # Cloudflare's SDK is large and eager: only a Pages stack imports it.
    import pulumi_cloudflare as cloudflare

    web = cfg.element_web
    assert provider is not None and web.source is not None and cfg.cloudflare.account_id
    account = cfg.cloudflare.account_id
    child = pulumi.ResourceOptions(parent=component, provider=provider)  # type: ignore[arg-type]
    env = render.build_env(cfg)
    source = web.source
    name = ElementWeb.name
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
    # PagesDomain creates no DNS record: the DNS part adds the CNAME.
    cloudflare.PagesDomain(f"{name}-domain", account_id=account, name=cfg.host("app"),
                           project_name=project.name, opts=child)
    return project.subdomain
