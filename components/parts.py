"""The optional parts around the Synapse cluster (Element Call, ntfy, coturn, Element Web,
Cloudflare DNS), built before it: their contributions become the cluster's Inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from components.part import Part, merge_homeserver
from components.platform import placement
from components.platform.spec import Service
from components.synapse import homeserver as hs
from components.synapse import services as synapse_services
from config.model import DockerTarget, KubernetesTarget, StackConfig


@dataclass
class Parts:
    parts: list[Part] = field(default_factory=list)
    inputs: synapse_services.Inputs = field(default_factory=synapse_services.Inputs)
    outputs: dict[str, object] = field(default_factory=dict)
    dns: Any = None
    # The one explicit Cloudflare provider (None when Cloudflare is off), for other users of the
    # same account such as Origin CA certificates: two providers would mean two tokens to rotate.
    cloudflare_provider: Any = None

    @property
    def services(self) -> list[Service]:
        return [s for part in self.parts for s in part.services]


def service_names(cfg: StackConfig) -> list[str]:
    """The parts' services for this config (placement checks run before anything is built)."""
    from components.coturn import render as coturn
    from components.element_call import render as element_call
    from components.element_web import render as element_web
    from components.ntfy import render as ntfy

    names: list[str] = []
    if cfg.element_call.enabled:
        names += [element_call.LIVEKIT_SERVICE, element_call.JWT_SERVICE, element_call.WEB_SERVICE]
    if cfg.ntfy.enabled:
        names.append(ntfy.SERVICE)
    if cfg.coturn.enabled:
        names.append(coturn.SERVICE)
    if cfg.element_web.enabled and cfg.element_web.mode == "container":
        names.append(element_web.SERVICE)
    return names


def livekit_turn_check(cfg: StackConfig) -> list[tuple[str, object, str]]:
    # LiveKit's TURN domain is the livekit host name, whose record points at the proxy's host.
    lk = cfg.element_call.livekit
    if not (cfg.element_call.enabled and lk.turn and isinstance(cfg.target, DockerTarget)):
        return []
    sfu, proxy = placement.host_of(cfg, "livekit"), placement.host_of(cfg, synapse_services.PROXY_SERVICE)
    if sfu and proxy and sfu.name != proxy.name:
        return [("element_call.livekit.turn", True, "LiveKit's embedded TURN answers on the livekit host "
                 f"name, which points at the proxy's host '{proxy.name}': place livekit there too")]
    return []


def build(cfg: StackConfig, platform: Any) -> Parts:
    # Imported here: each pulls in its provider SDK only when the stack builds.
    from components.coturn import Coturn
    from components.element_call import ElementCall
    from components.element_web import ElementWeb
    from components.ntfy import Ntfy

    built = Parts()
    provider = None
    if cfg.cloudflare.enabled:
        from components import dns

        provider = dns.provider(cfg)
        built.cloudflare_provider = provider
    if cfg.element_call.enabled:
        built.parts.append(ElementCall("element-call", cfg, platform))
    ntfy = None
    if cfg.ntfy.enabled:
        ntfy = Ntfy("ntfy", cfg, platform)
        built.parts.append(ntfy)
    if cfg.coturn.enabled:
        built.parts.append(Coturn("coturn", cfg, platform))
    web = None
    if cfg.element_web.enabled:
        web = ElementWeb("element-web", cfg, platform, provider=provider)
        built.parts.append(web)
    if provider is not None:
        from components.dns import PublicDns

        built.dns = PublicDns("dns", cfg, provider, app_cname=web.cname_target if web else None)

    inputs = built.inputs
    for part in built.parts:
        merge_homeserver(inputs.homeserver, part.homeserver)
        inputs.well_known_client.update(part.well_known_client)
        inputs.sites += part.sites
        inputs.site_addresses.update(part.site_addresses)
        inputs.secret_files.update(part.secret_files)
        built.outputs.update(part.urls)
    if ntfy is not None:
        built.outputs["ntfy_admin_user"] = ntfy.admin_user
        built.outputs["ntfy_admin_password"] = ntfy.admin_password
    if built.dns is not None:
        built.outputs["dns_records"] = sorted(r.name for r in _records(cfg))
    built.outputs["create_admin_command"] = create_admin_command(cfg)
    return built


def _records(cfg: StackConfig) -> list[Any]:
    from components.dns import records

    return records.plan(cfg)


def create_admin_command(cfg: StackConfig, user: str = "admin") -> str:
    """The command that registers the first Synapse admin, run against the main process.

    register_new_matrix_user reads registration_shared_secret_path from homeserver.yaml and talks
    to main's own listener, so it needs neither the secret nor the public URL.
    """
    main = hs.topology(cfg).processes[0]
    register = (f"register_new_matrix_user -c {hs.SHARED_CONFIG} -a -u {user} "
                f"http://localhost:{main.port}")
    target = cfg.target
    if isinstance(target, KubernetesTarget):
        flags = [f"-n {target.namespace}"]
        if target.kubeconfig:
            flags.insert(0, f"--kubeconfig {target.kubeconfig}")
        if target.context:
            flags.insert(0, f"--context {target.context}")
        # Main is a StatefulSet when it holds the media store, else a Deployment.
        kind = "statefulset" if hs.uses_media_store(cfg, main) else "deployment"
        return f"kubectl {' '.join(flags)} exec -it {kind}/{main.name} -- {register}"
    host = placement.host_of(cfg, main.name)
    prefix = ""
    if host is not None and host.url != "unix:///var/run/docker.sock":
        prefix = f"DOCKER_HOST={host.url} "
    return f"{prefix}docker exec -it {main.name} {register}"

