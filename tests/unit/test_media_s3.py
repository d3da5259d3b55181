"""Media in an S3-compatible bucket (synapse.media.storage: s3): the provider's entry in
homeserver.yaml, the credentials as a secret file, the derived image, each media process's
cache on Kubernetes, the backup without media, and the config's rules."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from components.backup import render as backup_render
from components.checks import view_of
from components.monitoring import render as mon
from components.synapse import homeserver as hs
from config import ConfigError, images
from config.model import StackConfig
from render import offline
from stack import parse
from tests.conftest import ROOT, load_yaml, stack_config, stack_raw

MEDIA = {"storage": "s3", "bucket": "example-org-media", "endpoint": "https://s3.eu-central-1.example.com",
         "region": "eu-central-1", "path_style": True, "prefix": "synapse/",
         "cache": {"size": "5Gi", "max_age": "3d"}}
MEDIA_SECRETS = ("media_s3_access_key_id", "media_s3_secret_access_key")
KEY_ID, KEY = "AKIAEXAMPLEKEYID0001", "media-secret-Zq8xK3mP9vL"


def with_s3(raw: dict[str, Any], **media: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    raw["synapse"] = {**raw.get("synapse", {}), "media": {**MEDIA, **media}}
    raw.update(media_s3_access_key_id=KEY_ID, media_s3_secret_access_key=KEY)
    return raw


def prod_s3(**media: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    raw, secret = stack_config("prod", ROOT)
    return with_s3(raw, image_registry="registry.example.org/matrix", **media), (*secret, *MEDIA_SECRETS)


@pytest.fixture(scope="module")
def prod() -> offline.Run:
    raw, secret = prod_s3()
    return offline.run(raw, stack="prod", secret_keys=secret)


@pytest.fixture(scope="module")
def dev() -> offline.Run:
    raw = with_s3(stack_raw("dev"), endpoint="http://127.0.0.1:8333")
    raw.pop("backup", None)
    return offline.run(raw, stack="dev", secret_keys=MEDIA_SECRETS)


def _synapse(run: offline.Run) -> list[dict[str, Any]]:
    return [e for e in run.services if e["service"].labels.get("matrix-stack.synapse-role")]


def test_the_provider_stores_synchronously_everything_with_no_secret_in_homeserver_yaml(prod: offline.Run) -> None:
    entry = _synapse(prod)[0]
    shared = next(f["content"] for f in entry["files"] if f["path"] == hs.SHARED_CONFIG)
    assert load_yaml(shared)["media_storage_providers"] == [{
        "module": "s3_storage_provider.S3StorageProviderBackend",
        "store_local": True, "store_remote": True, "store_synchronous": True,
        "config": {"bucket": "example-org-media", "endpoint_url": "https://s3.eu-central-1.example.com",
                   "region_name": "eu-central-1", "prefix": "synapse/"}}]
    assert KEY not in shared and KEY_ID not in shared


def test_credentials_reach_every_synapse_process_as_a_secret_file_named_by_env(prod: offline.Run) -> None:
    for entry in _synapse(prod):
        service = entry["service"]
        assert service.env == {"AWS_SHARED_CREDENTIALS_FILE": hs.S3_CREDENTIALS, "AWS_CONFIG_FILE": hs.S3_CONFIG}
        files = {f["path"]: f for f in entry["files"]}
        credentials = files[hs.S3_CREDENTIALS]
        assert credentials["secret"] and credentials["mode"] == 0o400
        assert credentials["content"] == f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {KEY}\n"
        assert not files[hs.S3_CONFIG]["secret"]
        assert "addressing_style = path" in files[hs.S3_CONFIG]["content"]
        assert KEY not in str(service.env) and KEY not in str(service.secret_env)


def test_botocore_reads_the_rendered_files_as_the_provider_will(dev: offline.Run, tmp_path: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore itself (the provider's client library) resolves credentials and addressing from
    the two files."""
    import botocore.session

    files = {f["path"]: f["content"] for f in _synapse(dev)[0]["files"]}
    for name, path in (("AWS_SHARED_CREDENTIALS_FILE", hs.S3_CREDENTIALS), ("AWS_CONFIG_FILE", hs.S3_CONFIG)):
        target = tmp_path / path.rsplit("/", 1)[1]
        target.write_text(files[path])
        monkeypatch.setenv(name, str(target))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    session = botocore.session.get_session()
    credentials = session.get_credentials()
    assert (credentials.access_key, credentials.secret_key) == (KEY_ID, KEY)
    assert session.get_config_variable("region") == "eu-central-1"
    assert session.get_scoped_config()["s3"] == {"addressing_style": "path"}


def test_docker_hosts_build_the_derived_image_pinned_by_both_versions(dev: offline.Run) -> None:
    ref = f"matrix-stack/synapse-s3:v{images.SYNAPSE_VERSION}-s3-{images.S3_STORAGE_PROVIDER_VERSION}"
    for entry in _synapse(dev):
        assert entry["service"].image == ref
    [build] = [r for r in dev.resources if r.type == "docker:index/image:Image"]
    assert build.inputs["imageName"] == ref and build.inputs["skipPush"] is True
    assert build.inputs["build"]["dockerfile"] == images.SYNAPSE_S3_RECIPE
    assert build.inputs["build"]["args"] == {"SYNAPSE_IMAGE": images.SYNAPSE,
                                             "S3_STORAGE_PROVIDER_VERSION": images.S3_STORAGE_PROVIDER_VERSION}
    [pulled] = [r for r in dev.resources if r.type == "docker:index/remoteImage:RemoteImage" and r.inputs["name"] == ref]
    assert build.urn in pulled.dependencies
    recipe = (ROOT / images.SYNAPSE_S3_RECIPE).read_text()
    assert "ARG SYNAPSE_IMAGE" in recipe and "synapse-s3-storage-provider==${S3_STORAGE_PROVIDER_VERSION}" in recipe


def test_without_s3_the_official_image_and_no_build() -> None:
    run = offline.run(stack_raw("dev"), stack="dev")
    assert {e["service"].image for e in _synapse(run)} == {images.SYNAPSE}
    assert not [r for r in run.resources if r.type == "docker:index/image:Image"]


def test_kubernetes_media_workers_keep_a_bounded_cache_of_their_own(prod: offline.Run) -> None:
    manifests = prod.deployment.manifests
    media = [name for name in manifests if name.startswith("deployment-synapse-media-repository-")]
    assert len(media) == 3
    # No Synapse process holds a claim: every one is a Deployment.
    assert not {f"statefulset-{p.name}" for p in hs.topology(prod.cfg).processes} & set(manifests)
    assert "persistentvolumeclaim-synapse-media" not in manifests
    for name in media:
        pod = manifests[name]["spec"]["template"]["spec"]
        assert {"name": "synapse-media", "emptyDir": {"sizeLimit": "5Gi"}} in pod["volumes"]
        assert "affinity" not in pod
        assert manifests[name]["spec"]["template"]["spec"]["containers"][0]["image"] == \
            f"registry.example.org/matrix/synapse-s3:v{images.SYNAPSE_VERSION}-s3-{images.S3_STORAGE_PROVIDER_VERSION}"
    assert "poddisruptionbudget-synapse-media-repository" in manifests
    # Nothing is built where the nodes pull from the operator's registry.
    assert not [r for r in prod.resources if r.type == "docker:index/image:Image"]


def test_the_backup_leaves_media_to_the_bucket_and_says_what_protects_it(prod: offline.Run) -> None:
    warnings = prod.warnings
    assert any("synapse.media.storage" in w and "versioning" in w and "replication" in w for w in warnings)
    scripts = "".join(str(f["content"]) for e in prod.services if e["service"].component == "backup"
                      for f in e["files"])
    assert hs.MEDIA_STORE not in scripts


def test_restic_addresses_a_path_style_bucket_by_path() -> None:
    raw, secret = stack_config("prod", ROOT)
    raw = copy.deepcopy(raw)
    raw["backup"] = {**raw["backup"], "repository": {**raw["backup"]["repository"], "path_style": True}}
    cfg = parse(raw, secret)
    assert "set -- -o s3.bucket-lookup=path" in backup_render.backup_script(cfg, _view(cfg), [])
    assert "s3.bucket-lookup=path" in backup_render.snapshots_command(cfg)


def _view(cfg: StackConfig) -> Any:
    from tests.conftest import stack_view

    return stack_view(cfg)


def _problems(raw: dict[str, Any], secret: tuple[str, ...] = ()) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse(raw, secret)
    return {p.path: str(p) for p in caught.value.problems}


def test_s3_needs_its_bucket_endpoint_credentials_and_on_kubernetes_a_registry() -> None:
    raw, secret = stack_config("prod", ROOT)
    raw = copy.deepcopy(raw)
    raw["synapse"] = {**raw["synapse"], "media": {"storage": "s3"}}
    found = _problems(raw, secret)
    assert {"synapse.media.bucket", "synapse.media.endpoint", "synapse.media.image_registry",
            "media_s3_access_key_id", "media_s3_secret_access_key"} <= set(found)
    assert "required with synapse.media.storage: s3" in found["synapse.media.bucket"]


def test_bucket_settings_without_s3_and_a_plain_http_endpoint_are_refused() -> None:
    found = _problems({"server_name": "example.org", "tls": {"acme_email": "ops@example.org"},
                       "synapse": {"media": {"bucket": "media", "path_style": True}}})
    assert "allowed only with synapse.media.storage: s3" in found["synapse.media.bucket"]
    assert "synapse.media.path_style" in found
    raw = with_s3({"server_name": "example.org", "tls": {"acme_email": "ops@example.org"}},
                  endpoint="http://s3.example.org")
    found = _problems(raw, MEDIA_SECRETS)
    assert "http://s3.example.org" in found["synapse.media.endpoint"]
    assert "https://" in found["synapse.media.endpoint"]


def test_a_cache_age_in_minutes_is_refused_as_s3_media_upload_reads_m_as_months() -> None:
    found = _problems(with_s3({"server_name": "localhost"}, endpoint="http://127.0.0.1:8333",
                              cache={"max_age": "30m"}), MEDIA_SECRETS)
    assert "synapse.media.cache.max_age" in found


def test_the_tests_install_the_provider_version_the_image_pins() -> None:
    """The boot test proves the provider the derived image installs: the same version."""
    pins = (ROOT / "requirements" / "test.in").read_text().splitlines()
    assert f"synapse-s3-storage-provider=={images.S3_STORAGE_PROVIDER_VERSION}" in pins


def _service(run: offline.Run, name: str) -> Any:
    return next((e["service"] for e in run.services if e["service"].name == name), None)


def test_docker_runs_a_cache_cleaner_with_the_media_volume_and_only_the_files_it_reads(dev: offline.Run) -> None:
    cleaner = _service(dev, hs.MEDIA_CACHE_CLEANER)
    holder = next(e["service"] for e in _synapse(dev) if e["service"].volumes)
    assert cleaner is not None, "no cache cleaner on Docker"
    assert (cleaner.image, cleaner.build, cleaner.volumes) == (holder.image, holder.build, holder.volumes)
    assert cleaner.user == holder.user and cleaner.read_only_root
    assert sorted(f.path for f in cleaner.files) == sorted([hs.DATABASE_CONFIG, hs.S3_CREDENTIALS, hs.S3_CONFIG])
    assert cleaner.env == holder.env and not cleaner.ports
    loop = cleaner.entrypoint[2]
    assert "s3_media_upload --no-progress update /media_store 3d" in loop and " --delete" in loop
    assert "sleep 3600 & wait $!" in loop
    # The database admits it, and counts its connection.
    claim = next(c for c in view_of(dev.cfg)[0].databases if c.database == hs.DATABASE_NAME)
    assert hs.MEDIA_CACHE_CLEANER in claim.clients


def test_kubernetes_runs_no_cache_cleaner_its_caches_are_per_pod(prod: offline.Run) -> None:
    assert _service(prod, hs.MEDIA_CACHE_CLEANER) is None
    claim = next(c for c in view_of(prod.cfg)[0].databases if c.database == hs.DATABASE_NAME)
    assert hs.MEDIA_CACHE_CLEANER not in claim.clients
    assert not any(job.job == hs.MEDIA_CACHE_CLEAN_JOB for job in view_of(prod.cfg)[0].scheduled_jobs)


def test_the_cleaner_reports_to_the_pushgateway_and_is_alerted_on_when_it_stops() -> None:
    raw = with_s3(stack_raw("dev"), endpoint="http://127.0.0.1:8333", cache={"clean_every_minutes": 30})
    raw.pop("backup", None)
    raw["monitoring"] = {"enabled": True}
    run = offline.run(raw, stack="dev", secret_keys=MEDIA_SECRETS)
    cleaner = _service(run, hs.MEDIA_CACHE_CLEANER)
    push = view_of(run.cfg)[0].metrics_push_target
    assert push is not None and cleaner.reaches == ((push.service, push.port),)
    assert f"http://{push.service}:{push.port}/metrics/job/{hs.MEDIA_CACHE_CLEAN_JOB}" in cleaner.entrypoint[2]
    assert "sleep 1800 & wait $!" in cleaner.entrypoint[2]
    rules = next(f["content"] for e in run.services for f in e["files"] if f["path"] == mon.RULES)
    assert "MediaCacheCleanOverdue" in rules and "MediaCacheCleanNeverReported" in rules
