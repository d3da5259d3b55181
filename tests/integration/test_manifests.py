"""The rendered Kubernetes manifests, checked offline: the API schema (kubernetes-validate,
strict), checkov's security checks (with a committed, reasoned skip list), parity with the
Docker target, and the Docker target's own invariants."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from components.platform.kubernetes.roles import PROMETHEUS_OPERATOR
from render import offline
from tests.conftest import ROOT, stack_config, stack_raw

KUBERNETES_VERSION = "1.33.0"
CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = ROOT / ".venv-checkov"
SKIPS_FILE = Path(__file__).with_name("checkov-skips.yaml")
SECRET_KEYS = stack_config("prod", ROOT)[1]  # the prod example's `secure:` keys
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
                ("monitoring.coreos.com/v1", "Probe")}
# The Prometheus Operator's CRDs at the release the objects are written for (scripts/test puts
# them here from its Go module).
OPERATOR_CRDS = Path.home() / ".cache" / "matrix-stack" / f"prometheus-operator-crds-{PROMETHEUS_OPERATOR}"


def _run(raw: dict[str, Any]) -> offline.Run:
    return offline.run(raw, stack="prod", secret_keys=tuple(k for k in SECRET_KEYS if k in raw))


@pytest.fixture(scope="module")
def prod() -> offline.Run:
    return _run(stack_raw("prod"))


@pytest.fixture(scope="module")
def manifest_dir(prod: offline.Run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("manifests")
    for name, obj in prod.deployment.manifests.items():
        (out / f"{name}.yaml").write_text(yaml.safe_dump(obj, sort_keys=True))
    return out


def _host_network_variant() -> dict[str, Any]:
    raw = copy.deepcopy(stack_raw("prod"))
    raw["target"] = {**raw["target"], "livekit_exposure": "host_network", "service_monitors": False}
    return raw


# ---------------------------------------------------------------- schema


def _check_schema(manifests: dict[str, dict[str, Any]]) -> list[str]:
    errors = []
    for name, obj in sorted(manifests.items()):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name}: {exc.message} at {'/'.join(map(str, exc.path))}")
    return errors


def test_every_manifest_validates_strictly_against_the_kubernetes_schema(prod: offline.Run) -> None:
    manifests = prod.deployment.manifests
    assert len(manifests) > 50
    assert _check_schema(manifests) == []


def test_the_host_network_variant_validates_too() -> None:
    manifests = _run(_host_network_variant()).deployment.manifests
    assert manifests["deployment-livekit"]["spec"]["template"]["spec"]["hostNetwork"] is True
    assert "service-livekit-public" not in manifests
    assert _check_schema(manifests) == []


def test_the_media_in_s3_variant_validates_too() -> None:
    """Media workers with a per-pod cache (an emptyDir with a size limit) and no claim."""
    raw = copy.deepcopy(stack_raw("prod"))
    raw["synapse"] = {**raw["synapse"], "media": {
        "storage": "s3", "bucket": "example-org-media", "endpoint": "https://s3.example.org",
        "image_registry": "registry.example.org/matrix", "cache": {"size": "5Gi"}}}
    raw.update(media_s3_access_key_id="AKIAEXAMPLE", media_s3_secret_access_key="example-secret")
    run = offline.run(raw, stack="prod", secret_keys=(*(k for k in SECRET_KEYS if k in raw),
                                                       "media_s3_access_key_id", "media_s3_secret_access_key"))
    manifests = run.deployment.manifests
    pod = manifests["deployment-synapse-media-repository-1"]["spec"]["template"]["spec"]
    assert {"name": "synapse-media", "emptyDir": {"sizeLimit": "5Gi"}} in pod["volumes"]
    assert _check_schema(manifests) == []


def test_service_monitors_select_services_with_a_metrics_port(prod: offline.Run) -> None:
    """ServiceMonitor is a CRD, absent from the schema set: checked by structure."""
    manifests = prod.deployment.manifests
    services = [o for o in manifests.values() if o["kind"] == "Service"]
    monitors = [o for o in manifests.values() if o["kind"] == "ServiceMonitor"]
    assert monitors
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["namespace"] == prod.cfg.target.namespace
        spec = monitor["spec"]
        assert set(spec) == {"selector", "namespaceSelector", "endpoints"}
        wanted = spec["selector"]["matchLabels"]
        matched = [s for s in services if wanted.items() <= s["metadata"]["labels"].items()]
        assert matched, monitor["metadata"]["name"]
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "honorLabels", "relabelings"}
            assert re.fullmatch(r"[0-9]+s", endpoint["interval"])
            for service in matched:
                assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def _crd_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((OPERATOR_CRDS / f"monitoring.coreos.com_{kind.lower()}s.yaml").read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return dict(version["schema"]["openAPIV3Schema"])


def _schema_problems(obj: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(_crd_schema(obj["kind"]))
    return [f"{obj['metadata']['name']}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(obj)]


@pytest.mark.skipif(not OPERATOR_CRDS.is_dir(), reason="the Prometheus Operator's CRDs (scripts/test fetches them)")
def test_service_monitors_and_the_rule_object_match_the_operators_crd_schemas(prod: offline.Run) -> None:
    """Every ServiceMonitor (each scrape target, the exporters among them) and the PrometheusRule
    carrying the rendered rule groups, against the CRDs' OpenAPI schemas; kube-prometheus-stack's
    selectors match them by `release` when the target names its Helm release."""
    raw = stack_raw("prod")
    raw["target"] = {**raw["target"], "prometheus_release": "kube-prometheus-stack"}
    manifests = _run(raw).deployment.manifests
    custom = [o for o in manifests.values() if (o["apiVersion"], o["kind"]) in CUSTOM_KINDS]
    assert [o["metadata"]["name"] for o in custom if o["kind"] == "PrometheusRule"] == ["prometheus"]
    problems = [p for o in custom for p in _schema_problems(o)]
    assert problems == [], "\n".join(problems)
    monitored = {o["metadata"]["name"] for o in custom if o["kind"] == "ServiceMonitor"}
    assert {"nginx-exporter", "postgres-exporter", "redis-exporter", "blackbox-exporter", "pushgateway",
            "synapse-main"} <= monitored
    assert all(o["metadata"]["labels"]["release"] == "kube-prometheus-stack" for o in custom)
    [rule] = [o for o in custom if o["kind"] == "PrometheusRule"]
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"VolumeSpaceLow", "CertificateExpiringSoon", "BackupOverdue"} <= names
    # The claims' space comes from the kubelet there.
    assert any("kubelet_volume_stats_available_bytes" in r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    # A broken object is caught (the schema is not vacuous).
    broken = {**rule, "spec": {"groups": [{"rules": [{"alert": "X"}]}]}}
    assert _schema_problems(broken)


@pytest.mark.skipif(not OPERATOR_CRDS.is_dir(), reason="the Prometheus Operator's CRDs (scripts/test fetches them)")
def test_every_blackbox_probe_reaches_the_operator_as_a_probe_object(prod: offline.Run) -> None:
    """The certificate and call probes the bundled Prometheus schedules (its prometheus.yml) are
    Probe objects for the cluster's own Prometheus too: the same job names, modules, targets and
    labels, through the stack's blackbox exporter; valid against the operator's CRD."""
    manifests = prod.deployment.manifests
    probes = [o for o in manifests.values() if o["kind"] == "Probe"]
    assert probes
    assert [p for o in probes for p in _schema_problems(o)] == []
    namespace = prod.cfg.target.namespace
    as_objects = sorted((o["spec"]["jobName"], o["spec"]["module"], tuple(o["spec"]["targets"]["staticConfig"]["static"]),
                         tuple(sorted(o["spec"]["targets"]["staticConfig"].get("labels", {}).items()))) for o in probes)
    assert {o["spec"]["prober"]["url"] for o in probes} == {f"blackbox-exporter.{namespace}.svc:9115"}
    prometheus_yml = next(f["content"] for e in prod.services for f in e["files"] if f["path"].endswith("prometheus.yml"))
    scraped = sorted((job["job_name"], job["params"]["module"][0], tuple(static["targets"]),
                      tuple(sorted(static.get("labels", {}).items())))
                     for job in yaml.safe_load(prometheus_yml)["scrape_configs"] if job.get("metrics_path") == "/probe"
                     for static in job["static_configs"])
    assert as_objects == scraped
    jobs = {job for job, *_ in as_objects}
    assert "certificates" in jobs and jobs & {"probes-http", "probes-tcp"}, jobs


# ---------------------------------------------------------------- checkov


def _checkov() -> Path:
    """checkov in its own virtualenv: its pins clash with Pulumi's (protobuf, grpcio)."""
    binary = CHECKOV_VENV / "bin" / "checkov"
    if binary.exists():
        return binary
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("checkov is not installed and uv is not available to install it (bash scripts/test installs both)")
    done = subprocess.run([uv, "venv", "-q", "--python", "3.11", str(CHECKOV_VENV)], capture_output=True, text=True)
    if done.returncode == 0:
        done = subprocess.run([uv, "pip", "install", "-q", "--python", str(CHECKOV_VENV / "bin" / "python"),
                               f"checkov=={CHECKOV_VERSION}"], capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not binary.exists():
        pytest.fail(f"could not install checkov into {CHECKOV_VENV.name}: {done.stderr[-500:]}")
    return binary


def _skips() -> list[dict[str, Any]]:
    skips = yaml.safe_load(SKIPS_FILE.read_text())["skips"]
    for entry in skips:
        assert re.fullmatch(r"CKV2?_K8S_[0-9]+", entry["id"]), entry
        assert len(entry.get("reason", "").split()) >= 5, f"{entry['id']}: give a reason"
    return skips


def _allowed(skips: list[dict[str, Any]], check_id: str, manifest: str) -> dict[str, Any] | None:
    for entry in skips:
        if entry["id"] == check_id and ("manifests" not in entry or
                                        any(fnmatch.fnmatchcase(manifest, p) for p in entry["manifests"])):
            return entry
    return None


def test_checkov_reports_no_failure_outside_the_skip_list(manifest_dir: Path) -> None:
    checkov = _checkov()
    done = subprocess.run([str(checkov), "-d", str(manifest_dir), "--framework", "kubernetes", "--quiet",
                           "--compact", "--output", "json", "--skip-download"],
                          capture_output=True, text=True, timeout=900)
    assert done.stdout.strip(), done.stderr[-2000:]
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert reports and all(r.get("check_type") == "kubernetes" for r in reports)
    skips = _skips()
    unexpected: list[str] = []
    used: set[str] = set()
    passed = 0
    for report in reports:
        passed += int(report["summary"]["passed"])
        for failure in report["results"]["failed_checks"]:
            manifest = Path(failure["file_path"]).stem
            entry = _allowed(skips, failure["check_id"], manifest)
            if entry is None:
                unexpected.append(f"{failure['check_id']} {failure['check_name']}: {manifest}")
            else:
                used.add(entry["id"])
    assert passed > 100  # checkov did look at the manifests
    assert unexpected == []
    stale = sorted({e["id"] for e in skips} - used)
    assert stale == [], f"skips nothing fails any more (remove them from {SKIPS_FILE.name}): {stale}"


# ---------------------------------------------------------------- parity with the Docker target


def _parity_raw(target: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(stack_raw("prod"))
    raw["target"] = target
    # Certificates are the target's business (ACME or Origin CA on Docker, the Ingress on
    # Kubernetes): compare the two targets without TLS.
    raw["cloudflare"] = {"enabled": False}
    raw.pop("cloudflare_api_token", None)
    raw["tls"] = {"mode": "none"}
    return raw


def _without_trusted_proxies(content: str) -> str:
    # Which proxy may report the client's address is the target's business too: the Ingress
    # controller's pod network on Kubernetes, nobody on a Docker host without Cloudflare.
    return "\n".join(line for line in content.splitlines()
                     if not line.strip().startswith(("set_real_ip_from ", "real_ip_")))


def _what_runs(run: offline.Run) -> dict[str, dict[str, Any]]:
    return {
        item["service"].name: {
            "image": item["service"].image,
            "command": (item["service"].entrypoint, item["service"].args),
            "files": sorted((f["path"], _without_trusted_proxies(f["content"])) for f in item["files"]),
            "env": {k: v for k, (v, _secret) in item["env"].items()},
        }
        for item in run.services
        # The backup's jobs differ by target in shape (compared below).
        if item["service"].component != "backup"
    }


def _backup_jobs(run: offline.Run) -> dict[str, tuple[Any, ...]]:
    """Each backup job and its dump: (image, command, schedule)."""
    jobs: dict[str, tuple[Any, ...]] = {}
    for item in run.services:
        service = item["service"]
        if service.component != "backup":
            continue
        jobs[service.name] = (service.image, (*(service.entrypoint or ()), *service.args), service.schedule)
        for step in service.steps:
            jobs[f"{service.name}-{step.name}"] = (step.image, step.command, None)
    return jobs


def test_docker_and_kubernetes_run_the_same_services() -> None:
    docker_run = _run(_parity_raw({"kind": "docker"}))
    kube_target = {k: v for k, v in stack_raw("prod")["target"].items()}
    kube_run = _run(_parity_raw(kube_target))
    docker, kube = _what_runs(docker_run), _what_runs(kube_run)
    # Volume usage: the node exporter reports it on Docker; on Kubernetes the kubelet does.
    assert set(docker) - set(kube) == {"node-exporter"}
    del docker["node-exporter"]
    # Prometheus's scrape jobs and rules, and the dashboards listing those rules, read volume usage
    # from other series on each (test_monitoring_rules checks both renders with promtool).
    for runs in (docker, kube):
        for name, prefix in (("grafana", "/etc/grafana/dashboards/"), ("prometheus", "/etc/prometheus/")):
            runs[name]["files"] = [f for f in runs[name]["files"] if not f[0].startswith(prefix)]
    assert sorted(docker) == sorted(kube)
    for name in sorted(docker):
        assert docker[name] == kube[name], name
    # The backup dumps in a container of its own on Docker (no pods there), as its job's step
    # on Kubernetes: the same images, commands and schedules.
    assert _backup_jobs(docker_run) == _backup_jobs(kube_run)
    assert set(_backup_jobs(docker_run)) == {"backup", "backup-check", "backup-dump"}


# ---------------------------------------------------------------- the Docker target's invariants


IMAGE_PINNED = re.compile(r"^[^@\s]+(:[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})$")


@pytest.mark.parametrize("stack", ["dev", "staging", "prod-on-docker"])
def test_docker_containers_publish_distinct_ports_mount_absolute_paths_and_pin_images(stack: str) -> None:
    if stack == "prod-on-docker":
        raw = copy.deepcopy(stack_raw("prod"))
        raw["target"] = {"kind": "docker"}
        raw["tls"] = {"mode": "acme", "acme_email": "admin@example.org"}
    else:
        raw = stack_raw(stack)
    # Each example's own `secure:` keys (staging's backup credentials are not prod's).
    secret_keys = set(stack_config("prod" if stack == "prod-on-docker" else stack, ROOT)[1])
    run = offline.run(raw, stack="test", secret_keys=tuple(k for k in secret_keys if k in raw))
    containers = run.of_type("docker:index/container:Container")
    assert containers
    published: dict[tuple[str, str, int, str], str] = {}
    clashes: list[str] = []
    # A holder's resource is named after its service, its container after its files' digest.
    holder_names = {c.name: c.plain_inputs()["name"] for c in containers}
    for container in containers:
        inputs = container.plain_inputs()
        for port in inputs.get("ports") or []:
            key = (container.provider, port.get("ip") or "0.0.0.0", int(port["external"]), port.get("protocol", "tcp"))
            if key in published:
                clashes.append(f"{container.name} and {published[key]} both publish {key[1:]}")
            published[key] = container.name
        paths = [u["file"] for u in inputs.get("uploads") or []]
        volumes = inputs.get("volumes") or []
        paths += [v["containerPath"] for v in volumes if "fromContainer" not in v]
        # A service's files come read-only from its own holder's volumes, at the holder's paths.
        holders = [v["fromContainer"] for v in volumes if "fromContainer" in v]
        # (The publisher of a service's live files reads them from their own holder.)
        own_holder = holder_names.get(f"{container.name.removesuffix('-publish')}-files")
        assert holders in ([], [own_holder]), f"{container.name}: files from {holders}"
        paths += list((inputs.get("tmpfs") or {}).keys())
        for path in paths:
            assert path.startswith("/"), f"{container.name}: {path} is not absolute"
        image = inputs["image"]
        assert IMAGE_PINNED.match(image), f"{container.name}: {image} is not pinned"
        tag = image.rsplit("@", 1)[0].rsplit(":", 1)[-1] if "@" not in image else ""
        assert tag not in {"latest", "stable", "main", "master"}, f"{container.name}: {image}"
    assert clashes == []
    images = run.of_type("docker:index/remoteImage:RemoteImage")
    for image in images:
        assert IMAGE_PINNED.match(image.plain_inputs()["name"]), image.name
