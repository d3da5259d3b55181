"""The two targets' facts (contract.Target), answered from the config alone: no SDK is loaded.

The Pulumi side of each target (docker.py, kubernetes/platform.py) extends these classes."""

from __future__ import annotations

from collections.abc import Sequence

from config.checks import Finding
from config.model import DockerTarget, KubernetesTarget, StackConfig

from . import placement
from .contract import Target

LOCAL_ENGINE = "unix:///var/run/docker.sock"
# Where a Kubernetes Ingress controller connects from: the cluster's private pod network.
PRIVATE_PROXY_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")


class DockerHosts:
    """Docker engines, local or over SSH: the proxy publishes its ports and holds the certificates."""

    kind = "docker"

    def __init__(self, cfg: StackConfig):
        assert isinstance(cfg.target, DockerTarget)
        self.cfg = cfg
        self.target: DockerTarget = cfg.target

    def reach(self, consumer: str, service: str, port: int) -> tuple[str, int, bool]:
        return placement.reach(self.cfg, consumer, service, port)

    def proxy_terminates_tls(self) -> bool:
        return self.cfg.tls_mode != "none"

    def trusted_proxy_ranges(self) -> tuple[str, ...]:
        return ()  # clients (or Cloudflare's edge) connect to the proxy directly

    def public_port(self, scheme: str) -> int:
        return self.target.https_port if scheme == "https" else self.target.http_port

    def proxy_host_port(self, scheme: str) -> int | None:
        return self.public_port(scheme)

    def docker(self, service: str) -> str:
        """The docker command that talks to the engine `service` runs on."""
        host = placement.host_of(self.cfg, service)
        return f"DOCKER_HOST={host.url} docker" if host is not None and host.url != LOCAL_ENGINE else "docker"

    def admin_command(self, service: str, stateful: bool, command: str) -> str:
        return f"{self.docker(service)} exec -it {service} {command}"

    def certificate_problems(self, direct_hostnames: Sequence[str]) -> list[Finding]:
        return []  # the proxy's ACME client obtains them (tls.acme_email is the config's own rule)

    def placement_problems(self, services: Sequence[str], together: Sequence[Sequence[str]]) -> list[Finding]:
        return placement.check(self.cfg, list(services), [list(group) for group in together])


class KubernetesCluster:
    """One namespace: an Ingress controller in front of a plain-HTTP proxy, cert-manager for
    publicly trusted certificates, Services as stable addresses."""

    kind = "kubernetes"

    def __init__(self, cfg: StackConfig):
        assert isinstance(cfg.target, KubernetesTarget)
        self.cfg = cfg
        self.target: KubernetesTarget = cfg.target

    def reach(self, consumer: str, service: str, port: int) -> tuple[str, int, bool]:
        return service, port, False  # every service is reached by its Service name

    def proxy_terminates_tls(self) -> bool:
        return False  # the Ingress does

    def trusted_proxy_ranges(self) -> tuple[str, ...]:
        return PRIVATE_PROXY_RANGES

    def public_port(self, scheme: str) -> int:
        return 443 if scheme == "https" else 80

    def proxy_host_port(self, scheme: str) -> int | None:
        return None

    @property
    def kubectl(self) -> str:
        """The kubectl command for the stack's cluster and namespace."""
        target = self.target
        flags = [f"--context {target.context}"] if target.context else []
        flags += [f"--kubeconfig {target.kubeconfig}"] if target.kubeconfig else []
        return " ".join(["kubectl", *flags, f"-n {target.namespace}"])

    def admin_command(self, service: str, stateful: bool, command: str) -> str:
        kind = "statefulset" if stateful else "deployment"
        return f"{self.kubectl} exec -it {kind}/{service} -- {command}"

    def certificate_problems(self, direct_hostnames: Sequence[str]) -> list[Finding]:
        # Nothing else fills the Secret of the Ingress for hostnames reached directly.
        if self.target.cert_manager_issuer or not direct_hostnames:
            return []
        return [("target.cert_manager_issuer", None,
                 "required: cert-manager issues the certificate of the hostnames reached directly, not "
                 f"through Cloudflare's proxy ({', '.join(direct_hostnames)})")]

    def placement_problems(self, services: Sequence[str], together: Sequence[Sequence[str]]) -> list[Finding]:
        return []  # the scheduler places pods; Services connect them wherever they run


def target_of(cfg: StackConfig) -> Target:
    if isinstance(cfg.target, DockerTarget):
        return DockerHosts(cfg)
    return KubernetesCluster(cfg)
