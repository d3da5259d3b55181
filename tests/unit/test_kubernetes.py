"""The Kubernetes adapter: the pure renderer on hand-made services, then the whole program
under mocks with the prod-like stack (Kubernetes, seed-000 workers)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest

import config
import stack
from components.edge import PROXY_SERVICE
from components.platform import kubernetes as kube
from components.platform.spec import (
    Edge,
    EdgeCertificate,
    File,
    HealthCheck,
    Port,
    PortRange,
    Resources,
    Service,
    Volume,
)
from components.synapse import homeserver as hs
from components.synapse import services as synapse_services
from render import offline
from tests.conftest import ROOT, max_connections, stack_config, stack_raw

CTX = kube.Context(namespace="matrix", storage_class="fast", ingress_class="nginx",
                   cert_manager_issuer="letsencrypt", max_body="100M")
# The prod example's secret keys (its `secure:` values).
PROD_SECRETS = stack_config("prod", ROOT)[1]
SYNAPSE_KINDS = ("Deployment", "StatefulSet")


def _svc(name: str = "web", **kw: Any) -> Service:
    return Service(name=name, component="test", image="example/web:1.2.3", **kw)


def _pod(objects: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    for kind in SYNAPSE_KINDS:
        key = f"{kind.lower()}-{name}"
        if key in objects:
            return objects[key]["spec"]["template"]
    raise KeyError(name)


# ---------------------------------------------------------------- the pure renderer


def test_stateless_service_is_a_deployment_with_its_security_probes_and_resources() -> None:
    service = _svc(user="991:991", read_only_root=True, writable_paths=("/tmp",),
                   ports=[Port("http", 8008)],
                   health=HealthCheck(("curl", "-f", "http://localhost:8008/health"), http_path="/health", http_port=8008),
                   resources=Resources(cpu_request="200m", memory_request="256Mi", memory_limit="1Gi"))
    objects = kube.render([service], CTX)
    deployment = objects["deployment-web"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 991, "runAsGroup": 991, "fsGroup": 991,
                                      "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}
    sec = container["securityContext"]
    assert sec["allowPrivilegeEscalation"] is False and sec["readOnlyRootFilesystem"] is True
    assert sec["capabilities"] == {"drop": ["ALL"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8008}
    assert container["resources"] == {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    assert {"name": "scratch-0", "mountPath": "/tmp"} in container["volumeMounts"]
    assert pod["automountServiceAccountToken"] is False
    assert objects["service-web"]["spec"]["type"] == "ClusterIP"
    assert "poddisruptionbudget-web" not in objects


def test_exec_probe_when_no_http_path() -> None:
    objects = kube.render([_svc(health=HealthCheck(("pg_isready",)))], CTX)
    assert _pod(objects, "web")["spec"]["containers"][0]["livenessProbe"]["exec"] == {"command": ["pg_isready"]}


def test_volumes_make_a_statefulset_with_claim_templates_from_the_storage_class() -> None:
    objects = kube.render([_svc("db", volumes=[Volume("db-data", "/data", size="5Gi")])], CTX)
    sts = objects["statefulset-db"]
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}},
                             "storageClassName": "fast"}
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_a_volume_several_services_mount_is_one_shared_claim() -> None:
    media = Volume("media", "/media")
    objects = kube.render([_svc("a", volumes=[media]), _svc("b", volumes=[media])], CTX)
    assert objects["persistentvolumeclaim-media"]["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("a", "b"):
        sts = objects[f"statefulset-{name}"]
        assert "volumeClaimTemplates" not in sts["spec"]
        assert {"name": "media", "persistentVolumeClaim": {"claimName": "media", "readOnly": False}} \
            in sts["spec"]["template"]["spec"]["volumes"]


def test_grouped_files_are_one_configmap_mounted_by_every_reader() -> None:
    shared = File("/conf/homeserver.yaml", "server_name: x\n", group="shared")
    key = File("/secrets/key", "s3cret", secret=True, mode=0o400, group="shared-secrets")
    a = _svc("a", files=[shared, key, File("/conf/a.yaml", "a: 1\n")])
    b = _svc("b", files=[shared, key])
    objects = kube.render([a, b], CTX)
    assert objects["configmap-shared"]["data"] == {"conf_homeserver.yaml": "server_name: x\n"}
    assert objects["secret-shared-secrets"]["stringData"] == {"secrets_key": "s3cret"}
    assert objects["configmap-a-files"]["data"] == {"conf_a.yaml": "a: 1\n"}
    assert "configmap-b-files" not in objects
    for name in ("a", "b"):
        pod = _pod(objects, name)["spec"]
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "cfg-shared", "mountPath": "/conf/homeserver.yaml", "subPath": "conf_homeserver.yaml",
                "readOnly": True} in mounts
        secret_volume = next(v for v in pod["volumes"] if v["name"] == "cfg-shared-secrets")
        assert secret_volume["secret"]["items"] == [{"key": "secrets_key", "path": "secrets_key", "mode": 0o400}]


def test_checksum_covers_exactly_the_files_a_pod_reads() -> None:
    a = _svc("a", files=[File("/conf/x", "1")])
    b = _svc("b", files=[File("/conf/y", "1")])
    before = kube.render([a, b], CTX)
    a2 = _svc("a", files=[File("/conf/x", "2")])
    after = kube.render([a2, b], CTX)
    annotation = kube.CHECKSUM_ANNOTATION
    assert _pod(before, "a")["metadata"]["annotations"][annotation] != _pod(after, "a")["metadata"]["annotations"][annotation]
    assert _pod(before, "b") == _pod(after, "b")


def test_init_args_become_an_init_container_with_the_same_mounts() -> None:
    service = _svc(init_args=("python", "-m", "check"), files=[File("/conf/x", "1")])
    pod = _pod(kube.render([service], CTX), "web")["spec"]
    [init] = pod["initContainers"]
    assert init["command"] == ["python", "-m", "check"]
    assert init["volumeMounts"] == pod["containers"][0]["volumeMounts"]


def test_secret_env_comes_from_a_secret_never_inline() -> None:
    objects = kube.render([_svc(env={"A": "1"}, secret_env={"PGPASSWORD": "pw"})], CTX)
    env = _pod(objects, "web")["spec"]["containers"][0]["env"]
    assert {"name": "A", "value": "1"} in env
    assert {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "web-env", "key": "PGPASSWORD"}}} in env
    assert objects["secret-web-env"]["stringData"] == {"PGPASSWORD": "pw"}


def test_services_sharing_a_secret_env_group_read_one_secret() -> None:
    a = _svc("a", secret_env={"PGPASSWORD": "pw"}, secret_env_group="db-env")
    b = _svc("b", secret_env={"PGPASSWORD": "pw", "EXTRA": "x"}, secret_env_group="db-env")
    c = _svc("c", secret_env={"PGPASSWORD": "pw"})
    objects = kube.render([a, b, c], CTX)
    assert [k for k, o in objects.items() if o["kind"] == "Secret"] == ["secret-db-env", "secret-c-env"]
    assert objects["secret-db-env"]["stringData"] == {"EXTRA": "x", "PGPASSWORD": "pw"}
    # Each reader refers to the group's Secret, for exactly the keys it reads.
    refs = {name: [e["valueFrom"]["secretKeyRef"] for e in _pod(objects, name)["spec"]["containers"][0]["env"]]
            for name in ("a", "b", "c")}
    assert refs == {"a": [{"name": "db-env", "key": "PGPASSWORD"}],
                    "b": [{"name": "db-env", "key": "EXTRA"}, {"name": "db-env", "key": "PGPASSWORD"}],
                    "c": [{"name": "c-env", "key": "PGPASSWORD"}]}
    with pytest.raises(ValueError, match="db-env: PGPASSWORD differs"):
        kube.render([a, dataclasses.replace(b, secret_env={"PGPASSWORD": "other"})], CTX)


def test_a_changed_secret_env_rolls_exactly_the_pods_that_read_it() -> None:
    def cluster(password: str, extra: str, token: str) -> dict[str, str]:
        services = [_svc("a", secret_env={"PGPASSWORD": password}, secret_env_group="db-env"),
                    _svc("b", secret_env={"PGPASSWORD": password, "EXTRA": extra}, secret_env_group="db-env"),
                    _svc("c", secret_env={"TOKEN": token}),
                    _svc("d", files=[File("/conf/x", "1")])]
        objects = kube.render(services, CTX)
        return {s.name: _pod(objects, s.name)["metadata"]["annotations"][kube.CHECKSUM_ANNOTATION] for s in services}

    before = cluster("pw", "x", "t")

    def rolled(after: dict[str, str]) -> set[str]:
        return {name for name in before if before[name] != after[name]}

    assert rolled(cluster("pw2", "x", "t")) == {"a", "b"}
    assert rolled(cluster("pw", "x2", "t")) == {"b"}
    assert rolled(cluster("pw", "x", "t2")) == {"c"}


ROLE = "example.org/role"


def _worker(index: int, **kw: Any) -> Service:
    """One instance of a scalable role, listening on its own port numbers."""
    return _svc(f"worker-{index}", ports=[Port("http", 9100 + index)], metrics_port=19100 + index, scalable=True,
                role_label=ROLE, labels={ROLE: "worker"}, **kw)


def _may_evict_together(objects: dict[str, dict[str, Any]], names: list[str]) -> bool:
    """Whether the eviction API lets one pod of each of these workloads (all healthy) go at the
    same time: every budget selecting some of them must allow that many unavailable (its
    maxUnavailable, or the pods it selects less its minAvailable)."""
    pods = {o["metadata"]["name"]: (o["spec"]["template"]["metadata"]["labels"], o["spec"]["replicas"])
            for o in objects.values() if o["kind"] in SYNAPSE_KINDS}
    for budget in (o for o in objects.values() if o["kind"] == "PodDisruptionBudget"):
        match = budget["spec"]["selector"]["matchLabels"]
        selected = [n for n, (labels, _r) in pods.items() if match.items() <= labels.items()]
        spec = budget["spec"]
        allowed = spec["maxUnavailable"] if "maxUnavailable" in spec else \
            sum(pods[n][1] for n in selected) - spec["minAvailable"]
        if len([n for n in names if n in selected]) > allowed:
            return False
    return True


def _budgets_of(objects: dict[str, dict[str, Any]], name: str) -> list[str]:
    labels = _pod(objects, name)["metadata"]["labels"]
    return [k for k, o in objects.items() if o["kind"] == "PodDisruptionBudget"
            and o["spec"]["selector"]["matchLabels"].items() <= labels.items()]


def test_scalable_roles_get_a_disruption_budget_that_still_lets_nodes_drain() -> None:
    objects = kube.render([_svc(scalable=True)], CTX)
    assert objects["poddisruptionbudget-web"]["spec"]["maxUnavailable"] == 1


def test_a_scalable_role_gets_one_budget_over_all_its_instances() -> None:
    single = _svc("single", role_label=ROLE, labels={ROLE: "single"})
    objects = kube.render([_worker(1), _worker(2), _worker(3), single, _svc("proxy", scalable=True)], CTX)
    assert sorted(k for k, o in objects.items() if o["kind"] == "PodDisruptionBudget") == \
        ["poddisruptionbudget-proxy", "poddisruptionbudget-test-worker"]
    workers = ["worker-1", "worker-2", "worker-3"]
    for name in workers:
        assert _budgets_of(objects, name) == ["poddisruptionbudget-test-worker"]
        assert _may_evict_together(objects, [name, "proxy", "single"])
    # A drain takes down one instance of the role at a time, never two.
    for pair in itertools.combinations(workers, 2):
        assert not _may_evict_together(objects, list(pair)), pair
    with pytest.raises(ValueError, match="some instances are scalable"):
        kube.render([_worker(1), dataclasses.replace(_worker(2), scalable=False)], CTX)


def _admitted(policies: list[dict[str, Any]], pod: dict[str, Any]) -> set[tuple[int, str, str]]:
    """(port, protocol, peers) the policies selecting `pod` admit: named ports resolved to the
    pod's own container ports, numbered ones as numbered, whether or not anything listens."""
    declared = [p for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    out = set()
    for policy in policies:
        if not policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items():
            continue
        for rule in policy["spec"]["ingress"]:
            peers = json.dumps(rule.get("from"), sort_keys=True)
            for port in rule.get("ports") or [{"port": d["containerPort"], "protocol": d["protocol"]} for d in declared]:
                if isinstance(port["port"], str):
                    out |= {(d["containerPort"], d["protocol"], peers) for d in declared
                            if d.get("name") == port["port"] and d["protocol"] == port["protocol"]}
                else:
                    out |= {(n, port["protocol"], peers) for n in range(port["port"], port.get("endPort", port["port"]) + 1)}
    return out


def _policies(objects: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The services' and roles' policies. The namespace's own (stack-*: default deny, DNS, the
    servers anyone may dial, cert-manager's solvers) admit no service's pod any ingress:
    tests/unit/test_network_isolation.py holds the whole set to what the services declare."""
    return [o for o in objects.values() if o["kind"] == "NetworkPolicy" and not o["metadata"]["name"].startswith("stack-")]


def test_a_role_shares_one_policy_that_admits_each_pod_exactly_its_own_ports() -> None:
    workers = [_worker(1), _worker(2), _worker(3)]
    objects = kube.render(workers, CTX)
    assert [p["metadata"]["name"] for p in _policies(objects)] == ["test-worker"]
    for worker in workers:
        pod = _pod(objects, worker.name)
        own = _admitted([kube.network_policy(worker, CTX)], pod)
        assert {(n, "TCP") for n, _proto, _peers in own} == {(worker.ports[0].port, "TCP"), (worker.metrics_port, "TCP")}
        # Exactly as strict as the instance's own policy: no sibling's port number is admitted.
        assert _admitted(_policies(objects), pod) == own
    # Instances whose rules differ keep a policy each.
    apart = kube.render([_worker(1), _worker(2, allowed_clients=("proxy",))], CTX)
    assert sorted(p["metadata"]["name"] for p in _policies(apart)) == ["worker-1", "worker-2"]


def test_allowed_clients_restrict_the_network_policy_to_those_pods() -> None:
    objects = kube.render([_svc("db", ports=[Port("pg", 5432)], allowed_clients=("a", "b"))], CTX)
    [rule] = objects["networkpolicy-db"]["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchExpressions": [
        {"key": kube.NAME_LABEL, "operator": "In", "values": ["a", "b"]}]}}]
    assert rule["ports"] == [{"port": 5432, "protocol": "TCP"}]
    open_ = kube.render([_svc("web", ports=[Port("http", 80)])], CTX)
    assert open_["networkpolicy-web"]["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]


def _livekit() -> Service:
    return _svc("livekit", ports=[Port("http", 7880), Port("rtc-tcp", 7881, public=True)],
                port_ranges=[PortRange("rtc-udp", 50100, 50102)])


def test_media_ports_go_through_a_load_balancer() -> None:
    objects = kube.render([_livekit()], CTX)
    public = objects["service-livekit-public"]["spec"]
    assert public["type"] == "LoadBalancer" and public["externalTrafficPolicy"] == "Local"
    assert [(p["port"], p["protocol"]) for p in public["ports"]] == [
        (7881, "TCP"), (50100, "UDP"), (50101, "UDP"), (50102, "UDP")]
    assert [p["port"] for p in objects["service-livekit"]["spec"]["ports"]] == [7880]
    assert "hostNetwork" not in _pod(objects, "livekit")["spec"]


def test_host_network_exposure_puts_the_sfu_on_the_node() -> None:
    ctx = kube.Context(namespace="matrix", livekit_exposure="host_network")
    objects = kube.render([_livekit(), _svc("other")], ctx)
    pod = _pod(objects, "livekit")["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "service-livekit-public" not in objects
    assert "hostNetwork" not in _pod(objects, "other")["spec"]
    # The host-networked SFU lives in a privileged namespace of its own (POD_SECURITY_EXCEPTIONS):
    # the stack's namespace keeps enforcing restricted, and its Service name still resolves.
    enforce = "pod-security.kubernetes.io/enforce"
    assert objects["namespace-matrix"]["metadata"]["labels"][enforce] == "restricted"
    assert objects["namespace-matrix-host-network"]["metadata"]["labels"][enforce] == "privileged"
    assert objects["deployment-livekit"]["metadata"]["namespace"] == "matrix-host-network"
    assert objects["deployment-other"]["metadata"]["namespace"] == "matrix"
    alias = objects["service-livekit-matrix"]
    assert alias["metadata"]["namespace"] == "matrix"
    assert alias["spec"]["externalName"] == "livekit.matrix-host-network.svc.cluster.local"
    assert objects["service-livekit"]["metadata"]["namespace"] == "matrix-host-network"
    # Its clients are the stack's pods, in the other namespace.
    peers = [peer for rule in objects["networkpolicy-livekit"]["spec"]["ingress"] for peer in rule.get("from", [])
             if "podSelector" in peer]
    assert peers and all(peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "matrix"}}
                         for peer in peers)


def test_the_namespace_enforces_restricted() -> None:
    objects = kube.render([_livekit(), _svc("other")], CTX)
    labels = objects["namespace-matrix"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == kube.ENFORCED_LEVEL == "restricted"
    assert [o["metadata"]["name"] for o in objects.values() if o["kind"] == "Namespace"] == ["matrix"]


EDGE_HOSTS = ("example.org", "matrix.example.org", "call.example.org")


def _proxy(tls: bool = True) -> Service:
    return _svc("synapse-proxy", files=[File("/etc/nginx/nginx.conf", "events {}\n")],
                ports=[Port("http", 8080, public=True), Port("status", 8081)], edge=Edge(EDGE_HOSTS, tls))


def _held(*hosts: str) -> EdgeCertificate:
    return EdgeCertificate(hosts, "CERT", "KEY")


def _backends(ingress: dict[str, Any]) -> list[dict[str, Any]]:
    return [r["http"]["paths"][0]["backend"]["service"] for r in ingress["spec"]["rules"]]


def test_ingress_routes_every_host_the_proxy_serves_to_its_plain_http_port() -> None:
    objects = kube.render([_proxy()], CTX)
    ingress = objects["ingress-synapse-proxy"]
    assert [r["host"] for r in ingress["spec"]["rules"]] == ["example.org", "matrix.example.org", "call.example.org"]
    assert ingress["spec"]["tls"] == [{"hosts": ["example.org", "matrix.example.org", "call.example.org"],
                                       "secretName": kube.TLS_SECRET}]
    assert _backends(ingress) == [{"name": "synapse-proxy", "port": {"name": "http"}}] * 3
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "100M"
    assert notes["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert "nginx.ingress.kubernetes.io/backend-protocol" not in notes
    assert ingress["spec"]["ingressClassName"] == "nginx"
    # Nothing proxied by Cloudflare: no Origin CA Ingress, no Secret for it.
    assert [k for k in objects if k.startswith("ingress-")] == ["ingress-synapse-proxy"]
    assert "secret-" + kube.ORIGIN_CA_SECRET not in objects


def test_proxied_hosts_get_the_origin_ca_ingress_and_direct_ones_cert_manager() -> None:
    objects = kube.render([_proxy()], CTX, _held("example.org", "matrix.example.org"))
    origin, direct = objects["ingress-synapse-proxy-origin-ca"], objects["ingress-synapse-proxy"]
    assert origin["spec"]["tls"] == [{"hosts": ["example.org", "matrix.example.org"],
                                      "secretName": kube.ORIGIN_CA_SECRET}]
    assert "cert-manager.io/cluster-issuer" not in origin["metadata"]["annotations"]
    assert direct["spec"]["tls"] == [{"hosts": ["call.example.org"], "secretName": kube.TLS_SECRET}]
    assert direct["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    for ingress in (origin, direct):
        assert _backends(ingress) == [{"name": "synapse-proxy", "port": {"name": "http"}}] * len(ingress["spec"]["rules"])
        notes = ingress["metadata"]["annotations"]
        assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "100M"
        assert notes["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "300"
    secret = objects["secret-" + kube.ORIGIN_CA_SECRET]
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["stringData"] == {"tls.crt": "CERT", "tls.key": "KEY"}


def test_an_ingress_without_hosts_is_not_emitted() -> None:
    objects = kube.render([_proxy()], CTX, _held(*EDGE_HOSTS))
    assert [k for k in objects if k.startswith("ingress-")] == ["ingress-synapse-proxy-origin-ca"]


def test_a_plain_http_stack_gets_an_ingress_without_tls() -> None:
    objects = kube.render([_proxy(tls=False)], CTX)
    ingress = objects["ingress-synapse-proxy"]
    assert "tls" not in ingress["spec"]
    assert "cert-manager.io/cluster-issuer" not in ingress["metadata"]["annotations"]


def test_rendering_is_deterministic() -> None:
    services = [_livekit(), _svc("db", volumes=[Volume("d", "/d")], files=[File("/c", "x", group="g")]), _proxy()]
    held = _held("matrix.example.org", "example.org")
    first = kube.render(copy.deepcopy(services), CTX, held)
    assert first == kube.render(services, CTX, held)
    assert list(first) == list(kube.render(services, CTX, held))


# ---------------------------------------------------------------- the program under mocks


def prod_raw(**synapse: Any) -> dict[str, Any]:
    raw = copy.deepcopy(stack_raw("prod"))
    raw["synapse"] = {**raw["synapse"], **synapse}
    return raw


@pytest.fixture(scope="module")
def prod() -> offline.Run:
    raw, secret = stack_config("prod", ROOT)
    return offline.run(raw, stack="prod", secret_keys=secret)


def test_prod_declares_workloads_services_budgets_and_policies(prod: offline.Run) -> None:
    by_type: dict[str, list[offline.Registered]] = {}
    for r in prod.resources:
        by_type.setdefault(r.type, []).append(r)
    names = {t: {r.name for r in rs} for t, rs in by_type.items()}
    processes = [p.name for p in hs.topology(prod.cfg).processes]
    assert len(processes) == 22  # main + seed-000's 21 workers
    workloads = names["kubernetes:apps/v1:Deployment"] | names["kubernetes:apps/v1:StatefulSet"]
    for process in processes:
        assert f"deployment-{process}" in workloads or f"statefulset-{process}" in workloads
        assert f"service-{process}" in names["kubernetes:core/v1:Service"]
    assert "statefulset-synapse-postgres" in names["kubernetes:apps/v1:StatefulSet"]
    # Three media workers (and the backup jobs) share one media store: a single ReadWriteMany
    # claim; the backup's scratch claim is the jobs' own.
    assert names["kubernetes:core/v1:PersistentVolumeClaim"] == {"persistentvolumeclaim-synapse-media",
                                                                  "persistentvolumeclaim-backup-scratch"}
    assert {"poddisruptionbudget-synapse-generic", "poddisruptionbudget-synapse-proxy"} \
        <= names["kubernetes:policy/v1:PodDisruptionBudget"]
    assert "poddisruptionbudget-synapse-typing" not in names["kubernetes:policy/v1:PodDisruptionBudget"]
    assert {"networkpolicy-synapse-postgres", "networkpolicy-synapse-redis", "networkpolicy-synapse-generic"} \
        <= names["kubernetes:networking.k8s.io/v1:NetworkPolicy"]
    assert names["kubernetes:networking.k8s.io/v1:Ingress"] == {"ingress-synapse-proxy", "ingress-synapse-proxy-origin-ca"}
    monitors = names["kubernetes:monitoring.coreos.com/v1:ServiceMonitor"]
    assert {"servicemonitor-synapse-main", "servicemonitor-synapse-generic",
            "servicemonitor-synapse-event-persister"} <= monitors
    [provider] = by_type["pulumi:providers:kubernetes"]
    for r in prod.resources:
        if r.type.startswith("kubernetes:"):
            assert r.provider.startswith(provider.urn), r.name


def _roles(prod: offline.Run) -> dict[str, list[str]]:
    """Synapse's processes by worker role (main its own)."""
    by_role: dict[str, list[str]] = {}
    for process in hs.topology(prod.cfg).processes:
        by_role.setdefault(process.role.name if process.role else "main", []).append(process.name)
    return by_role


def test_prod_drains_at_most_one_instance_of_a_synapse_role_at_a_time(prod: offline.Run) -> None:
    manifests = prod.deployment.manifests
    scalable: dict[str, list[str]] = {}
    for process in hs.topology(prod.cfg).processes:
        if process.role and not process.role.single:
            scalable.setdefault(process.role.name, []).append(process.name)
    assert max(len(names) for names in scalable.values()) > 1
    for role, names in scalable.items():
        budget = f"poddisruptionbudget-synapse-{role.replace('_', '-')}"
        for name in names:
            # Every instance is covered by its role's budget, and only by it.
            assert _budgets_of(manifests, name) == [budget], name
            assert _may_evict_together(manifests, [name])
        for pair in itertools.combinations(names, 2):
            assert not _may_evict_together(manifests, list(pair)), pair
    # Instances of different roles, and the proxy, may go at the same time.
    assert _may_evict_together(manifests, [names[0] for names in scalable.values()] + [PROXY_SERVICE])
    assert _budgets_of(manifests, "synapse-typing-1") == []


def test_every_synapse_process_reads_its_database_password_from_the_shared_secret_file(prod: offline.Run) -> None:
    manifests = prod.deployment.manifests
    for process in hs.topology(prod.cfg).processes:
        pod = _pod(manifests, process.name)["spec"]
        assert not [e for c in pod["containers"] + pod.get("initContainers", []) for e in c.get("env", [])
                    if "valueFrom" in e], process.name
        # Its wait for PostgreSQL reads the same file: every init container mounts it.
        for c in pod["containers"] + pod.get("initContainers", []):
            assert hs.DATABASE_CONFIG in {m["mountPath"] for m in c.get("volumeMounts", [])}, (process.name, c["name"])
        assert f"secret-{process.name}-env" not in manifests


def test_prod_policies_admit_each_synapse_pod_exactly_its_own_ports(prod: offline.Run) -> None:
    manifests = prod.deployment.manifests
    policies = _policies(manifests)
    # One policy per role, however many instances it has.
    role_policies = [p for p in policies if synapse_services.ROLE_LABEL in p["spec"]["podSelector"]["matchLabels"]]
    assert sorted(p["metadata"]["name"] for p in role_policies) == \
        sorted(f"synapse-{role.replace('_', '-')}" for role in _roles(prod))
    services = {item["service"].name: item["service"] for item in prod.services}
    for process in hs.topology(prod.cfg).processes:
        pod = _pod(manifests, process.name)
        assert _admitted(policies, pod) == _admitted([kube.network_policy(services[process.name], CTX)], pod)


def test_prod_protects_the_data_it_owns(prod: offline.Run) -> None:
    postgres = prod.by_name("statefulset-synapse-postgres")
    assert postgres.protect and postgres.retain_on_delete
    media = prod.by_name("persistentvolumeclaim-synapse-media")
    assert media.protect and media.retain_on_delete
    assert not prod.by_name("deployment-synapse-generic-1").protect


def test_secrets_are_pulumi_secrets_and_masked_in_manifests(prod: offline.Run) -> None:
    secret = prod.by_name("secret-synapse-shared-secrets")
    assert secret.masked()["inputs"]["stringData"] == offline.MASK
    manifest = prod.deployment.manifests["secret-synapse-shared-secrets"]
    assert set(manifest["stringData"].values()) == {offline.MASK}
    # The manifests hold no generated secret value anywhere.
    text = repr(prod.deployment.manifests)
    for item in prod.services:
        for f in item["files"]:
            if f["secret"] and len(f["content"]) > 16:
                assert f["content"] not in text


def test_manifest_checksums_equal_the_declared_ones(prod: offline.Run) -> None:
    declared = prod.by_name("deployment-synapse-generic-1").plain_inputs()
    manifest = prod.deployment.manifests["deployment-synapse-generic-1"]
    annotation = kube.CHECKSUM_ANNOTATION
    assert declared["spec"]["template"]["metadata"]["annotations"][annotation] == \
        manifest["spec"]["template"]["metadata"]["annotations"][annotation]


def test_ingress_body_limit_follows_max_upload_size(program: Callable[..., offline.Run]) -> None:
    run = program(prod_raw(max_upload_size="80M"), secret_keys=PROD_SECRETS)
    for key in ("ingress-synapse-proxy", "ingress-synapse-proxy-origin-ca"):
        notes = run.deployment.manifests[key]["metadata"]["annotations"]
        assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "80M"


def _hosts(ingress: dict[str, Any]) -> list[str]:
    [tls] = ingress["spec"]["tls"]
    rules = [r["host"] for r in ingress["spec"]["rules"]]
    assert tls["hosts"] == rules
    return rules


def test_prod_splits_the_ingress_by_certificate(prod: offline.Run) -> None:
    manifests = prod.deployment.manifests
    origin, direct = manifests["ingress-synapse-proxy-origin-ca"], manifests["ingress-synapse-proxy"]
    # Proxied by Cloudflare: the Origin CA certificate, no cert-manager (HTTP-01 ends at the edge).
    assert set(_hosts(origin)) == {"example.org", "call.example.org", "jwt.example.org", "app.example.org",
                                   "ntfy.example.org", "auth.example.org", "grafana.example.org"}
    assert origin["spec"]["tls"][0]["secretName"] == kube.ORIGIN_CA_SECRET
    assert "cert-manager.io/cluster-issuer" not in origin["metadata"]["annotations"]
    # DNS-only (WebRTC): browsers connect directly, so cert-manager's publicly trusted certificate.
    assert _hosts(direct) == ["livekit.example.org"]
    assert direct["spec"]["tls"][0]["secretName"] == kube.TLS_SECRET
    assert direct["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
    for ingress in (origin, direct):
        assert {b["port"]["name"] for b in _backends(ingress)} == {"http"}


def test_prod_origin_ca_secret_is_a_pulumi_secret_from_the_stack_provider(prod: offline.Run) -> None:
    secret = prod.by_name("secret-" + kube.ORIGIN_CA_SECRET)
    inputs = secret.plain_inputs()
    assert inputs["type"] == "kubernetes.io/tls"
    assert set(inputs["stringData"]) == {"tls.crt", "tls.key"}
    assert secret.masked()["inputs"]["stringData"] == offline.MASK
    manifest = prod.deployment.manifests["secret-" + kube.ORIGIN_CA_SECRET]
    assert manifest["stringData"] == {"tls.crt": offline.MASK, "tls.key": offline.MASK}
    assert inputs["stringData"]["tls.key"] not in repr(prod.deployment.manifests)
    [issued] = prod.of_type("cloudflare:index/originCaCertificate:OriginCaCertificate")
    # The other private keys are MAS's signing keys.
    [key] = [k for k in prod.of_type("tls:index/privateKey:PrivateKey") if not k.name.startswith("mas-")]
    # The mocks derive each output from its resource's name: the Secret holds exactly these two.
    assert offline.stand_in(issued.name, 64) in inputs["stringData"]["tls.crt"]
    assert offline.stand_in(key.name, 64) in inputs["stringData"]["tls.key"]
    assert set(issued.plain_inputs()["hostnames"]) == set(_hosts(prod.deployment.manifests["ingress-synapse-proxy-origin-ca"]))
    # The DNS records' provider: one Cloudflare token for the whole stack.
    [provider] = prod.of_type("pulumi:providers:cloudflare")
    assert issued.provider.startswith(provider.urn + "::")
    # Kubernetes runs no certbot container: cert-manager keeps the direct names' certificate.
    assert not any(s["service"].name == "acme" for s in prod.services)


def test_without_cloudflare_one_cert_manager_ingress_serves_every_host(program: Callable[..., offline.Run]) -> None:
    raw = prod_raw()
    raw["cloudflare"] = {"enabled": False}
    raw.pop("cloudflare_api_token")
    run = program(raw, stack="prod", secret_keys=PROD_SECRETS)
    ingresses = {k: v for k, v in run.deployment.manifests.items() if k.startswith("ingress-")}
    assert list(ingresses) == ["ingress-synapse-proxy"]
    ingress = ingresses["ingress-synapse-proxy"]
    assert {"example.org", "livekit.example.org", "call.example.org"} <= set(_hosts(ingress))
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
    assert not run.of_type("cloudflare:index/originCaCertificate:OriginCaCertificate")
    assert "secret-" + kube.ORIGIN_CA_SECRET not in run.deployment.manifests


def test_direct_hostnames_without_a_cert_manager_issuer_are_a_config_error() -> None:
    raw = prod_raw()
    raw["target"] = {k: v for k, v in raw["target"].items() if k != "cert_manager_issuer"}
    with pytest.raises(config.ConfigError) as err:
        stack.parse(raw, PROD_SECRETS)
    assert "target.cert_manager_issuer" in str(err.value)
    assert "livekit.example.org" in str(err.value)
    # Every hostname proxied (no Element Call, so no DNS-only LiveKit): no issuer needed.
    raw["element_call"] = {"enabled": False}
    stack.parse(raw, PROD_SECRETS)


def _changed(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def pooler_ini(run: offline.Run) -> str:
    service = next(e for e in run.services if e["service"].name == "synapse-pgbouncer")
    return next(str(f["content"]) for f in service["files"] if f["path"].endswith("pgbouncer.ini"))


def test_one_more_generic_worker_changes_only_its_objects_and_the_proxy_config(
        prod: offline.Run, program: Callable[..., offline.Run]) -> None:
    counts = dict(hs.topology(prod.cfg).counts)
    counts["generic"] += 1
    new = f"synapse-generic-{counts['generic']}"
    run = program(prod_raw(workers={"preset": "seed-000", "counts": {"generic": counts["generic"]}}),
                  secret_keys=PROD_SECRETS)
    changed = _changed(prod.deployment.manifests, run.deployment.manifests)
    own = {k for k in changed if k.endswith(f"-{new}")}
    assert own >= {f"deployment-{new}", f"service-{new}"}
    # Its worker file is one more key of the Synapse processes' shared ConfigMap, which no other
    # pod mounts: every other Synapse pod stays as it was.
    shared = "configmap-synapse-shared"
    added = run.deployment.manifests[shared]["data"].keys() - prod.deployment.manifests[shared]["data"].keys()
    process = next(p for p in hs.topology(run.cfg).workers if p.name == new)
    assert added == {kube.file_key(hs.worker_config_path(process))}
    assert {k: v for k, v in run.deployment.manifests[shared]["data"].items() if k not in added} == \
        prod.deployment.manifests[shared]["data"]
    expected = own | {shared, "configmap-synapse-proxy-files"}
    # PostgreSQL's max_connections grows with the process count (components/postgres):
    # then, and only then, PostgreSQL restarts too.
    if max_connections(prod.cfg) != max_connections(run.cfg):
        expected |= {"statefulset-synapse-postgres"}
    # So does the pooler's pool (in steps of POOL_STEP): then, and only then, the pooler restarts.
    if pooler_ini(prod) != pooler_ini(run):
        expected |= {"configmap-synapse-pgbouncer-files", "deployment-synapse-pgbouncer"}
    # The Redis, pooler and MAS (token introspection) policies list every Synapse process as a
    # client (PostgreSQL's lists the pooler, not them).
    expected |= {"networkpolicy-synapse-pgbouncer", "networkpolicy-synapse-redis", "networkpolicy-mas"}
    # Every pod of the namespace may dial the new worker (it admits anyone): one more egress rule.
    expected |= {"networkpolicy-stack-open-services"}
    # The proxy reads the changed nginx.conf: its pod rolls through the checksum, nothing else.
    expected |= {"deployment-synapse-proxy"}
    # Prometheus scrapes the new worker (its config, its rules, its egress): its pod rolls.
    expected |= {"configmap-prometheus-files", "statefulset-prometheus", "networkpolicy-prometheus"}
    # Grafana's dashboards are generated from the same targets and alerts: their ConfigMap
    # changes, and Grafana's pod rolls through its checksum.
    expected |= {"configmap-grafana-dashboards", "statefulset-grafana"}
    # The role's budget and policy already cover the new instance; it reads the shared env Secret.
    assert changed == expected
    proxy_before = copy.deepcopy(prod.deployment.manifests["deployment-synapse-proxy"])
    proxy_after = copy.deepcopy(run.deployment.manifests["deployment-synapse-proxy"])
    for proxy in (proxy_before, proxy_after):
        del proxy["spec"]["template"]["metadata"]["annotations"][kube.CHECKSUM_ANNOTATION]
    assert proxy_before == proxy_after


def test_a_new_event_persister_rolls_every_synapse_pod(prod: offline.Run,
                                                       program: Callable[..., offline.Run]) -> None:
    counts = dict(hs.topology(prod.cfg).counts)
    run = program(prod_raw(workers={"preset": "seed-000",
                                    "counts": {"event_persister": counts["event_persister"] + 1}}),
                  secret_keys=PROD_SECRETS)
    annotation = kube.CHECKSUM_ANNOTATION
    for process in hs.topology(prod.cfg).processes:
        before = _pod(prod.deployment.manifests, process.name)["metadata"]["annotations"][annotation]
        after = _pod(run.deployment.manifests, process.name)["metadata"]["annotations"][annotation]
        assert before != after, process.name
    # The shared homeserver.yaml is one ConfigMap, changed once.
    assert prod.deployment.manifests["configmap-synapse-shared"] != run.deployment.manifests["configmap-synapse-shared"]


def test_pod_checksum_covers_secret_env_and_is_keyed() -> None:
    from components.platform.spec import File, Service

    base = Service(name="synapse-main", component="synapse", image="matrixdotorg/synapse:v1.163.2",
                   files=[File("/conf/homeserver.yaml", "server_name: example.org\n"),
                          File("/secrets/email.yaml", "email: {smtp_pass: hunter2}\n", secret=True)],
                   secret_env={"PGPASSWORD": "old"})
    rotated = dataclasses.replace(base, secret_env={"PGPASSWORD": "new"})
    # A rotated database password rolls the pods that read it.
    assert kube.checksum(base) != kube.checksum(rotated)
    # Keyed, the annotation says nothing a guess at the secrets could confirm.
    plain = kube.checksum(base)
    assert kube.digest([(n, str(v)) for n, v in kube.checksum_inputs(base)], "k1") != plain
    assert kube.digest([(n, str(v)) for n, v in kube.checksum_inputs(base)], "k1") != \
        kube.digest([(n, str(v)) for n, v in kube.checksum_inputs(base)], "k2")


def test_prod_runs_two_proxies_and_keeps_one_through_a_drain(prod: offline.Run) -> None:
    manifests = prod.deployment.manifests
    assert manifests["deployment-synapse-proxy"]["spec"]["replicas"] == 2
    assert manifests["poddisruptionbudget-synapse-proxy"]["spec"] == {
        "minAvailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": PROXY_SERVICE,
                                                        "app.kubernetes.io/part-of": "matrix-stack"}}}
