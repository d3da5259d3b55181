"""The Kubernetes target's facts and operator verbs (contract.Target), answered from the config
alone: no SDK is loaded. The adapter (kubernetes/platform.py) extends this class."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import Any

from config.checks import Finding
from config.model import KubernetesTarget, StackConfig

from .contract import Handover, Host, OneShot, OperatorStep, Session, Terms, Workload


class KubernetesCluster:
    """One namespace: an Ingress controller in front of a plain-HTTP proxy, cert-manager for
    publicly trusted certificates, Services as stable addresses."""

    kind = "kubernetes"
    terms = Terms(place="cluster", workloads="workloads", volume="claim", starts_in_order=False)
    # A CronJob's pod runs them as init containers.
    scheduled_steps = True
    reports_volume_usage = True
    # A cache volume is each pod's emptyDir.
    shares_caches = False

    def __init__(self, cfg: StackConfig):
        assert isinstance(cfg.target, KubernetesTarget)
        self.cfg = cfg
        self.target: KubernetesTarget = cfg.target

    def reach(self, consumer: str, service: str, port: int) -> tuple[str, int, bool]:
        return service, port, False  # every service is reached by its Service name

    def proxy_terminates_tls(self) -> bool:
        return False  # the Ingress does

    def per_machine(self, service: str) -> tuple[str, ...]:
        return ()  # the kubelet reports each claim's usage

    def trusted_proxy_ranges(self) -> tuple[str, ...]:
        # Only the Ingress controller's addresses, as configured: trusting the whole private pod
        # network would let any pod in the cluster claim any client address.
        return tuple(self.target.trusted_proxies)

    def public_port(self, scheme: str) -> int:
        return 443 if scheme == "https" else 80

    def proxy_host_port(self, scheme: str) -> int | None:
        return None

    def certificate_problems(self, direct_hostnames: Sequence[str]) -> list[Finding]:
        # Nothing else fills the Secret of the Ingress for hostnames reached directly.
        if self.target.cert_manager_issuer or not direct_hostnames:
            return []
        return [("target.cert_manager_issuer", None,
                 "required: cert-manager issues the certificate of the hostnames reached directly, not "
                 f"through Cloudflare's proxy ({', '.join(direct_hostnames)})")]

    def placement_problems(self, services: Sequence[str], together: Sequence[Sequence[str]]) -> list[Finding]:
        return []  # the scheduler places pods; Services connect them wherever they run

    def host_of(self, service: str) -> Host | None:
        return None  # the scheduler places pods

    def volume_name(self, volume: str) -> str:
        return volume  # the PersistentVolumeClaim's name

    # ------------------------------------------------------------ the operator's verbs

    @property
    def kubectl(self) -> str:
        """The kubectl command for the stack's cluster and namespace."""
        target = self.target
        flags = [f"--context {target.context}"] if target.context else []
        flags += [f"--kubeconfig {target.kubeconfig}"] if target.kubeconfig else []
        return " ".join(["kubectl", *flags, f"-n {target.namespace}"])

    @staticmethod
    def _workload(service: str, stateful: bool) -> str:
        return f"{'statefulset' if stateful else 'deployment'}/{service}"

    def admin_command(self, service: str, stateful: bool, command: str) -> str:
        return f"{self.kubectl} exec -it {self._workload(service, stateful)} -- {command}"

    def exec_command(self, service: str, stateful: bool, command: str, *, stdin: bool = False) -> str:
        return f"{self.kubectl} exec {'-i ' if stdin else ''}{self._workload(service, stateful)} -- {command}"

    def stop(self, services: Sequence[Workload], label: str | None = None) -> list[str]:
        if label is not None:
            return [f"{self.kubectl} scale deployment,statefulset -l {label} --replicas=0"]
        return [f"{self.kubectl} scale --replicas=0 {' '.join(self._workload(*s) for s in services)}"]

    def run_scheduled(self, service: str, command: str, user: str | None) -> str:
        # A Job from the service's CronJob runs its command as the schedule would, as its pod's
        # user; `command` is what that Job runs already.
        kubectl = self.kubectl
        job = f"{service}-now-$(date -u +%Y%m%d%H%M%S)"
        return (f'job="{job}" && {kubectl} create job --from=cronjob/{service} "$job" && '
                f'{kubectl} wait --for=condition=complete --timeout=3600s "job/$job" && '
                f'{kubectl} logs "job/$job"')

    def start(self, services: Sequence[Workload], stack: str) -> list[str]:
        # The program declares each workload's replica count: applying it scales them back.
        return [f"pulumi up --stack {stack}"]

    # One-shot runs are pods; what the operator hands over are Secrets they read, written from a
    # pipe (no command line and no pod spec holds a secret) and deleted at the end.

    @staticmethod
    def _env_secret(handover: Handover) -> str:
        return f"{handover.name}-env"

    @staticmethod
    def _files_secret(handover: Handover) -> str:
        return f"{handover.name}-{handover.files_label}"

    def hand_over(self, handover: Handover) -> Session:
        kubectl = self.kubectl
        fmt = "".join(f"{k}=%s\\n" for k in handover.secret_env)
        values = " ".join(f'"${k}"' for k in handover.secret_env)
        env_secret = self._env_secret(handover)
        before = [(f"{handover.secrets_text} as a Secret the {handover.purpose} pods read (deleted at the end).",
                   f"printf '{fmt}' {values} | {kubectl} create secret generic {env_secret} "
                   "--from-env-file=/dev/stdin")]
        after = [(f"Remove the {handover.purpose}'s Secret.", f"{kubectl} delete secret {env_secret}")]
        names = [name for name, _path in handover.files]
        if names:
            files_secret = self._files_secret(handover)
            text = handover.files_text
            before.append((f"{text[:1].upper()}{text[1:]} as a Secret the {handover.purpose} pod mounts (deleted at "
                           "the end).",
                           f"{kubectl} create secret generic {files_secret} "
                           + " ".join(f"--from-file={name}" for name in names)))
            after.append((f"Remove {text}.", f"{kubectl} delete secret {files_secret} && rm {' '.join(names)}"))
        return Session(before=tuple(OperatorStep(*step) for step in before),
                       after=tuple(OperatorStep(*step) for step in after),
                       files={name: f"/{handover.files_label}/{name}" for name in names})

    def run_once(self, run: OneShot) -> str:
        env: list[dict[str, Any]] = [
            {"name": k, "valueFrom": {"secretKeyRef": {"name": self._env_secret(run.handover), "key": k}}}
            for k in run.secret_env]
        env += [{"name": k, "value": v} for k, v in run.env]
        volumes: list[dict[str, Any]] = [
            {"name": f"v{i}", "persistentVolumeClaim": {"claimName": self.volume_name(m.volume), "readOnly": m.read_only}}
            for i, m in enumerate(run.mounts)]
        mounts: list[dict[str, Any]] = [{"name": f"v{i}", "mountPath": m.path, "readOnly": m.read_only}
                                        for i, m in enumerate(run.mounts)]
        if run.files:
            label = run.handover.files_label
            volumes.append({"name": label, "secret": {"secretName": self._files_secret(run.handover),
                                                      "defaultMode": 0o400}})
            mounts.append({"name": label, "mountPath": f"/{label}", "readOnly": True})
        container: dict[str, Any] = {"name": run.container, "image": run.image}
        spec: dict[str, Any] = {"containers": [container]}
        if run.command:
            # The whole command replaces the image's entrypoint.
            container.update({"stdin": True, "env": env, "command": list(run.args)})
            if mounts:
                container["volumeMounts"] = mounts
                spec["volumes"] = volumes
        else:
            container.update({"args": list(run.args), "env": env, "volumeMounts": mounts, "stdin": True})
            spec["volumes"] = volumes
        overrides = {"apiVersion": "v1", "spec": {**spec, "restartPolicy": "Never", "automountServiceAccountToken": False}}
        # The labels its policies select (kubernetes/objects.selector): under the namespace's
        # default deny a pod that no policy selects resolves names and dials nothing else.
        labels = (f"--labels=app.kubernetes.io/name={run.network_as},app.kubernetes.io/part-of=matrix-stack "
                  if run.network_as else "")
        return (f"{self.kubectl} run {run.name} --rm -i --quiet --restart=Never --image={run.image} {labels}"
                f"--overrides={shlex.quote(json.dumps(overrides, separators=(',', ':')))}")
