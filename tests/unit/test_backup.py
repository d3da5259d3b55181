"""The backup section of the config, and the pure pieces of the backup part: its scripts, its
services and the restore procedure. The drill (tests/integration/test_backup_drill.py) runs
them for real."""

from __future__ import annotations

import copy
import json
import re
import shlex
from typing import Any

import pytest

from components import image_facts
from components.backup import render
from components.backup import services as backup_services
from config import ConfigError, cron, images
from config.model import StackConfig
from stack import parse
from tests.conftest import stack_view


def _synapse_db(cfg: StackConfig) -> render.Database:
    """Synapse's database as the backup dumps it (the first the view lists)."""
    return render.databases(stack_view(cfg))[0]

PUBLIC: dict[str, Any] = {"server_name": "example.org", "tls": {"acme_email": "ops@example.org"}}
S3 = {"kind": "s3", "endpoint": "https://s3.example.net", "bucket": "matrix-backups"}
SFTP = {"kind": "sftp", "host": "vault.example.net", "user": "backup", "path": "/srv/restic",
        "known_hosts": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleHostKeyReplaceItWithSshKeyscanOutput"}
SECRET = "hunter2-Zq8xK3mP9vL"


def with_backup(base: dict[str, Any] = PUBLIC, **backup: Any) -> dict[str, Any]:
    raw = copy.deepcopy(base)
    raw["backup"] = {"enabled": True, **backup}
    return raw


def problems(raw: dict[str, Any], secret_keys: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(raw, secret_keys)
    return [str(p) for p in info.value.problems]


# ---------------------------------------------------------------- the config


def test_backup_is_off_unless_enabled() -> None:
    assert parse(PUBLIC).backup.enabled is False


@pytest.mark.parametrize(("expression", "words"), [
    ("61 3 * * *", "minute field '61': 61 is outside 0-59"),
    ("0 24 * * *", "hour field '24': 24 is outside 0-23"),
    ("0 3 * *", "got 4 field(s)"),
    ("@daily", "got 1 field(s)"),
    ("0 3 * * mon", "day-of-week field 'mon': 'mon' is not a number"),
    ("0 3 5-1 * *", "the range 5-1 runs backwards"),
    ("*/0 3 * * *", "a step must be at least 1"),
    ("0 0 31 2 *", "never fires"),
    ("0 3 * * 7", "day-of-week field '7': 7 is outside 0-6"),
])
def test_an_invalid_schedule_is_refused_naming_the_field(expression: str, words: str) -> None:
    found = problems(with_backup(schedule=expression))
    assert found == [f"matrix-stack:backup.schedule: {found[0].split('backup.schedule: ', 1)[1]}"]
    assert words in found[0]
    assert f"(got '{expression}')" in found[0]
    assert "minute hour day-of-month month day-of-week" in found[0] or "never fires" in found[0]


def test_the_check_schedule_is_judged_too() -> None:
    found = problems(with_backup(check_schedule="0 5 * * * *"))
    assert len(found) == 1 and found[0].startswith("matrix-stack:backup.check_schedule: ")


@pytest.mark.parametrize("expression", ["30 3 * * *", "0 */6 * * *", "15 2,14 1-7 * 0", "0 0 29 2 *", "5 4 * * 1-5/2"])
def test_a_valid_schedule_is_kept(expression: str) -> None:
    assert cron.problem(expression) is None
    assert parse(with_backup(schedule=expression)).backup.schedule == expression


def test_retention_that_keeps_nothing_is_refused() -> None:
    found = problems(with_backup(retention={"daily": 0, "weekly": 0, "monthly": 0}))
    assert found == ["matrix-stack:backup.retention.daily: retention keeps nothing: restic forget would delete "
                     "every snapshot; set at least one of daily, weekly, monthly above 0 (got 0)"]
    assert parse(with_backup(retention={"daily": 0, "weekly": 0, "monthly": 12})).backup.retention.monthly == 12


def test_credentials_in_plaintext_are_refused_and_never_shown() -> None:
    raw = with_backup(repository=S3)
    raw.update(backup_s3_access_key_id=SECRET, backup_s3_secret_access_key=SECRET)
    found = problems(raw)
    assert sorted(p.split(": ", 1)[0] for p in found) == [
        "matrix-stack:backup_s3_access_key_id", "matrix-stack:backup_s3_secret_access_key"]
    assert all("must be a Pulumi secret" in p and SECRET not in p for p in found)


@pytest.mark.parametrize(("repository", "keys"), [
    (S3, ["backup_s3_access_key_id", "backup_s3_secret_access_key"]),
    (SFTP, ["backup_sftp_private_key"]),
])
def test_a_remote_repository_requires_its_credentials(repository: dict[str, Any], keys: list[str]) -> None:
    found = problems(with_backup(repository=repository))
    assert [p.split(": ", 1)[0] for p in found] == [f"matrix-stack:{k}" for k in keys]
    raw = with_backup(repository=repository)
    raw.update({k: SECRET for k in keys})
    assert parse(raw, tuple(keys)).backup.repository.kind == repository["kind"]


def test_a_bad_repository_is_refused_at_its_key() -> None:
    found = problems(with_backup(repository={**S3, "bucket": "Matrix_Backups"}))
    assert found == ["matrix-stack:backup.repository.bucket: must be a bucket name of 3 to 63 lowercase letters, "
                     "digits, '.' and '-' (got 'Matrix_Backups')"]
    found = problems(with_backup(repository={"kind": "nfs"}))
    assert found == ["matrix-stack:backup.repository.kind: must be one of 'volume', 's3', 'sftp' (got 'nfs')"]


def test_a_signing_key_from_a_backup_must_look_like_one() -> None:
    found = problems({**PUBLIC, "signing_key": SECRET}, ("signing_key",))
    assert found == ["matrix-stack:signing_key: must be a Synapse signing key file: one line 'ed25519 <key id> "
                     "<unpadded base64 seed>', as the backup holds it (got [secret])"]


def test_a_restored_signing_key_replaces_the_generated_one(program: Any) -> None:
    key = "ed25519 a_Xyz123 " + "A" * 43
    run = program({"server_name": "localhost", "signing_key": key}, secret_keys=("signing_key",))
    main = next(e for e in run.services if e["service"].name == "synapse-main")
    files = {f["path"]: f for f in main["files"]}
    assert files["/secrets/signing.key"]["content"] == key + "\n"
    assert files["/secrets/signing.key"]["secret"]
    assert not [r.name for r in run.resources if r.name.startswith("synapse-signing-key")]
    generated = program({"server_name": "localhost"})
    assert [r.name for r in generated.resources if r.name.startswith("synapse-signing-key")]


# ---------------------------------------------------------------- the warning


def test_a_volume_on_the_databases_docker_host_is_warned_about() -> None:
    cfg = parse(with_backup())
    assert render.warnings(cfg, stack_view(cfg)) == [
        "matrix-stack:backup.repository.kind: the restic repository is a volume on 'local', the Docker host that runs "
        "the database: losing that host loses the backups with it; use kind s3 or sftp for a copy elsewhere "
        "(got volume)"]
    s3 = parse(with_backup(repository=S3) | {"backup_s3_access_key_id": SECRET, "backup_s3_secret_access_key": SECRET},
               ("backup_s3_access_key_id", "backup_s3_secret_access_key"))
    assert render.warnings(s3, stack_view(s3)) == []
    two_hosts = with_backup()
    two_hosts["target"] = {"kind": "docker", "hosts": [
        {"name": "db", "url": "ssh://db.example.org", "address": "10.0.0.1"},
        {"name": "vault", "url": "ssh://vault.example.org", "address": "10.0.0.2", "services": ["backup*"]}]}
    # The model alone: the placement check knows the backup's services once the stack builds them.
    assert render.warnings(StackConfig.model_validate(two_hosts), stack_view(StackConfig.model_validate(two_hosts))) == []
    assert render.warnings(parse(PUBLIC), stack_view(parse(PUBLIC))) == []  # off


# ---------------------------------------------------------------- scripts and services


def _cfg(raw: dict[str, Any]) -> Any:
    secrets = tuple(k for k in raw if k.startswith("backup_") or k == "database_password")
    return parse(raw, secrets)


def test_the_scripts_call_only_what_their_images_ship() -> None:
    cfg = _cfg(with_backup())
    dbs = [_synapse_db(cfg)]
    dump = render.dump_script(cfg, dbs)
    backup = render.backup_script(cfg, stack_view(cfg), dbs)
    dump_programs = images.facts_for(render.dump_image(stack_view(cfg))).programs
    restic_programs = images.facts_for(cfg.backup.image).programs
    for program in ("pg_dump", "cp", "chmod", "mv", "wc", "mkdir", "rm", "touch", "sleep"):
        assert re.search(rf"(^|[\s(]){program} ", dump, re.M), program
        assert program in dump_programs, program
    for program in ("restic", "mkdir", "rm", "touch", "sleep"):
        assert re.search(rf"(^|[\s(]){program} ", backup, re.M), program
        assert program in restic_programs, program
    assert "crond" in restic_programs and "ssh" in restic_programs


def test_the_dump_runs_in_the_servers_own_image() -> None:
    cfg = _cfg(with_backup(PUBLIC | {"synapse": {"database": {"image": "postgres:16.11-alpine"}}}))
    assert render.dump_image(stack_view(cfg)) == "postgres:16.11-alpine"
    dump = next(s for s in backup_services.services(cfg, stack_view(cfg), [_synapse_db(cfg)],
                                                    {"restic_password": "p", "signing_key": "k"}, ["pw"])
                if s.name == render.DUMP_SERVICE)
    assert dump.image == "postgres:16.11-alpine"
    # Our script, not the image's entrypoint, without capabilities, as nobody: the user crond runs
    # the jobs as, which share its scratch volume, handed to nobody with whatever a dump that ran
    # as root or as PostgreSQL's user left there.
    assert dump.user == "65534:65534" and dump.drop_capabilities and dump.entrypoint == ("/bin/sh",)
    [scratch] = dump.volumes
    assert scratch.owner == "65534:65534" and scratch.owner_recursive


def test_the_backup_holds_the_dumps_the_keys_and_the_media_store() -> None:
    cfg = _cfg(with_backup(retention={"daily": 3, "weekly": 0, "monthly": 2}))
    script = render.backup_script(cfg, stack_view(cfg), [_synapse_db(cfg)])
    backup_line = next(line for line in script.splitlines() if " backup --json" in line)
    assert shlex.split(backup_line)[-5:] == [render.DUMPS, render.KEYS, "/media_store", ">", render.SUMMARY]
    forget = next(line for line in script.splitlines() if " forget " in line)
    assert shlex.split(forget)[2:] == ["forget", "--host", "matrix-stack", "--keep-daily", "3", "--keep-monthly", "2",
                                       "--prune"]


@pytest.mark.parametrize("repository", [{}, S3, SFTP])
def test_every_backup_service_keeps_to_its_image_facts(repository: dict[str, Any]) -> None:
    raw = with_backup(**({"repository": repository} if repository else {}))
    raw.update(backup_s3_access_key_id=SECRET, backup_s3_secret_access_key=SECRET, backup_sftp_private_key=SECRET)
    cfg = _cfg(raw)
    secrets = {name: f"stand-in-{name}-value" for name in (
        "restic_password", "signing_key", "s3_access_key_id", "s3_secret_access_key", "sftp_private_key")}
    built = backup_services.services(cfg, stack_view(cfg), [_synapse_db(cfg)], secrets, ["stand-in-database-password"])
    assert [s.name for s in built] == [render.DUMP_SERVICE, render.BACKUP_SERVICE, render.CHECK_SERVICE]
    assert [p for s in built for p in image_facts.violations(s)] == []
    secret_paths = {f.path for s in built for f in s.files if f.secret}
    assert render.PASSWORD_FILE in secret_paths and render.PGPASS_FILE in secret_paths
    assert f"{render.KEYS}/signing_key" in secret_paths
    plain = "".join(str(f.content) for s in built for f in s.files if not f.secret)
    assert "stand-in-" not in plain and SECRET not in plain


# ---------------------------------------------------------------- the restore procedure


def test_the_docker_procedure_restores_in_order_with_the_pinned_image() -> None:
    cfg = _cfg(with_backup())
    steps = render.restore_procedure(cfg, stack_view(cfg), [_synapse_db(cfg)], "prod")
    commands = [s.command for s in steps]
    assert commands[0] == ('export RESTIC_PASSWORD="$(pulumi stack output --stack prod --show-secrets '
                           'backup_repository_password)"')
    kinds = [c.split(" | ")[-1].split()[:2] for c in commands[1:]]
    assert kinds == [["docker", "run"], ["pulumi", "config"], ["docker", "stop"], ["docker", "exec"],
                     ["docker", "run"], ["docker", "start"]]
    assert all(f" {images.RESTIC} " in c for c in commands if c.startswith("docker run"))
    assert commands[1] == render.snapshots_command(cfg)
    assert "pg_restore -U synapse -d synapse --clean --if-exists" in commands[4]
    assert "--include /media_store" in commands[5] and "matrix-stack-synapse-media:/media_store" in commands[5]
    text = render.procedure_text(steps)
    assert text.startswith("# 1. ") and text.count("\n# ") == len(steps) - 1


def test_a_remote_docker_host_is_named_in_each_command() -> None:
    raw = with_backup()
    raw["target"] = {"kind": "docker", "hosts": [{"name": "one", "url": "ssh://deploy@one.example.org"}]}
    cfg = _cfg(raw)
    commands = [s.command for s in render.restore_procedure(cfg, stack_view(cfg), [_synapse_db(cfg)], "staging")]
    assert all(c.startswith("DOCKER_HOST=ssh://deploy@one.example.org docker ") for c in commands
               if "docker" in c.split()[0:2] or c.split()[0].startswith("DOCKER_HOST"))
    assert sum(c.startswith("DOCKER_HOST=") for c in commands) == 6


def _overrides(command: str) -> dict[str, Any]:
    word = next(w for w in shlex.split(command.split(" | ")[0]) if w.startswith("--overrides="))
    return json.loads(word.split("=", 1)[1])


def test_the_kubernetes_procedure_runs_pods_of_the_pinned_image() -> None:
    raw = with_backup(repository=S3)
    raw.update(target={"kind": "kubernetes", "namespace": "chat", "cert_manager_issuer": "le"},
               synapse={"workers": {"preset": "seed-000"}},
               backup_s3_access_key_id=SECRET, backup_s3_secret_access_key=SECRET)
    cfg = _cfg(raw)
    steps = render.restore_procedure(cfg, stack_view(cfg), [_synapse_db(cfg)], "prod")
    commands = [s.command for s in steps]
    runs = [c for c in commands if "kubectl -n chat run backup-restore" in c]
    assert len(runs) == 4  # snapshots, the key, the database, the media
    for command in runs:
        pod = _overrides(command)
        container = pod["spec"]["containers"][0]
        assert container["image"] == images.RESTIC
        assert container["args"][:2] == ["-r", "s3:https://s3.example.net/matrix-backups/matrix-stack"]
        assert {e["name"] for e in container["env"]} == {"RESTIC_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    media = _overrides(next(c for c in runs if "--include" in c))
    assert media["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "synapse-media"
    scale = next(c for c in commands if " scale " in c)
    assert "statefulset/synapse-media-repository-1" in scale and "deployment/synapse-main" in scale
    assert "deployment/synapse-proxy" in scale
    assert commands[-2:] == ["pulumi up --stack prod", "kubectl -n chat delete secret backup-restore-env"]
    assert any("exec -i statefulset/synapse-postgres -- pg_restore" in c for c in commands)
    # The password and credentials reach the pods through a Secret written from a pipe: no
    # command line, pod spec or stack output holds them.
    [made] = [c for c in commands if "create secret generic backup-restore-env" in c]
    assert made.startswith("printf ") and "--from-env-file=/dev/stdin" in made
    for command in runs:
        assert "$RESTIC_PASSWORD" not in command and "$AWS_SECRET_ACCESS_KEY" not in command


def test_mas_adds_its_database_and_keys() -> None:
    raw = with_backup(PUBLIC | {"mas": {"enabled": True}})
    cfg = _cfg(raw)
    dbs = render.databases(stack_view(cfg))
    assert [(d.name, d.user, d.service) for d in dbs] == [("synapse", "synapse", "synapse-postgres"),
                                                          ("mas", "mas", "synapse-postgres")]
    dump = render.dump_script(cfg, dbs)
    assert re.search(r"^  dump_database mas '[^']*dbname=mas user=mas[^']*' /backup/scratch/dumps/mas.dump \|\| return 1$",
                     dump, re.M)
    assert set(render.key_files(stack_view(cfg))) == {"signing_key", "mas_encryption", "mas_rsa-4096", "mas_ec-p256"}
    steps = render.restore_procedure(cfg, stack_view(cfg), dbs, "prod")
    assert sum("pg_restore -U mas -d mas" in s.command for s in steps) == 1
    assert render.databases(stack_view(_cfg(with_backup()))) == [_synapse_db(_cfg(with_backup()))]


# ---------------------------------------------------------------- the part in the stack


def _stack(name: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    from render.__main__ import stack_config
    from tests.conftest import ROOT

    raw, secret = stack_config(name, ROOT)
    return raw, tuple(secret)


def test_dev_has_no_backup(program: Any) -> None:
    raw, secret = _stack("dev")
    run = program(raw, secret_keys=secret)
    assert not [e for e in run.services if e["service"].component == render.COMPONENT]
    assert not [k for k in run.deployment.outputs if k.startswith("backup_")]


def test_prod_schedules_cron_jobs_with_the_dump_as_their_first_step(program: Any) -> None:
    raw, secret = _stack("prod")
    run = program(raw, secret_keys=secret, stack="prod")
    manifests = run.deployment.manifests
    job = manifests["cronjob-backup"]
    assert job["spec"]["schedule"] == "30 3 * * *" and job["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [dump] = pod["initContainers"]
    assert (dump["image"], dump["command"]) == (images.POSTGRES, ["/bin/sh", render.DUMP_SCRIPT])
    assert dump["securityContext"]["runAsUser"] == 70  # the PostgreSQL image's user
    [restic] = pod["containers"]
    assert (restic["image"], restic["command"] + restic["args"]) == (
        images.RESTIC, ["/bin/sh", render.BACKUP_SCRIPT, "backup"])
    assert pod["restartPolicy"] == "Never"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"synapse-media", "backup-scratch"}  # the bucket holds the repository
    check = manifests["cronjob-backup-check"]["spec"]
    assert check["schedule"] == "0 5 * * 0"
    assert check["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"] == [render.BACKUP_SCRIPT, "check"]
    password = run.by_name("backup-repository-password")
    assert password.type == "random:index/randomPassword:RandomPassword" and password.protect


def test_staging_runs_the_jobs_under_crond_beside_a_dump_container(program: Any) -> None:
    raw, secret = _stack("staging")
    run = program(raw, secret_keys=secret, stack="staging")
    containers = {r.name: r.plain_inputs() for r in run.of_type("docker:index/container:Container")}
    for name, mode, schedule in (("backup", "backup", "30 3 * * *"), ("backup-check", "check", "0 5 * * 0")):
        inputs = containers[name]
        assert inputs["entrypoints"] == ["crond", "-f", "-d", "8", "-c", "/etc/crontabs"]
        assert inputs["capabilities"] == {"drops": ["ALL"], "adds": ["SETGID", "SETUID"]}
        # crond is root and starts the job as nobody, the crontab's name (no crontab of root's);
        # the job's output is crond's, the container's log.
        assert inputs.get("user") is None
        [(path, table)] = [(u["file"], u["content"]) for u in run.uploads(name) if u["file"].startswith("/etc/crontabs/")]
        assert path == "/etc/crontabs/nobody" and table == f"{schedule} /bin/sh {render.BACKUP_SCRIPT} {mode}\n"
        # The job's secret files are nobody's to read; the crontab stays root's, as crond requires.
        owners = {u["file"]: u.get("owner") for u in run.uploads(name)}
        assert owners[render.PASSWORD_FILE] == "65534" and owners[path] is None, owners
    dump = containers["backup-dump"]
    assert dump["entrypoints"] == ["/bin/sh"] and dump["command"] == [render.DUMP_SCRIPT]
    assert dump["image"].startswith(images.POSTGRES)
    outputs = run.deployment.outputs
    procedure = outputs["backup_restore_procedure"]
    assert procedure.startswith("# 1. ") and "--stack staging" in procedure
    assert "DOCKER_HOST=ssh://deploy@staging.example.org docker stop" in procedure
    assert outputs["backup_snapshots_command"] in procedure
    assert "sftp:matrix-backup@vault.example.net:/srv/restic/matrix-staging" in outputs["backup_snapshots_command"]


def test_a_volume_repository_warns_in_the_stacks_diagnostics(program: Any) -> None:
    run = program({"server_name": "localhost", "backup": {"enabled": True}})
    assert [w for w in run.warnings if "backup.repository.kind" in w]
    assert not [w for w in program({"server_name": "localhost"}).warnings if "backup" in w]


def test_a_scheduled_service_needs_crond_and_docker_refuses_steps() -> None:
    import dataclasses

    from components.platform.docker import scheduled
    from components.platform.spec import Service, Step

    job = Service(name="job", component="test", image=images.LK_JWT_SERVICE, schedule="0 * * * *")
    assert image_facts.violations(job) == [
        f"job: runs on a schedule, which Docker hosts run with BusyBox crond, and {images.LK_JWT_SERVICE} "
        "does not ship it"]
    stepped = dataclasses.replace(job, image=images.RESTIC, steps=(Step("s", images.POSTGRES, ("true",)),))
    with pytest.raises(ValueError, match="steps need a pod"):
        scheduled(stepped)
    # crond runs a crontab's jobs as the user it is named after: a uid the image does not name
    # cannot have one.
    unnamed = dataclasses.replace(job, image=images.RESTIC, user="991:991")
    with pytest.raises(ValueError, match="991:991, which restic/restic:.* does not name"):
        scheduled(unnamed)


def test_the_restore_pods_validate_against_the_kubernetes_schema() -> None:
    import kubernetes_validate

    for repository in (S3, SFTP, {}):
        raw = with_backup(**({"repository": repository} if repository else {}))
        raw.update(target={"kind": "kubernetes", "cert_manager_issuer": "le"}, mas={"enabled": True},
                   backup_s3_access_key_id=SECRET, backup_s3_secret_access_key=SECRET, backup_sftp_private_key=SECRET)
        cfg = _cfg(raw)
        commands = [s.command for s in render.restore_procedure(cfg, stack_view(cfg), render.databases(stack_view(cfg)), "prod")]
        runs = [c for c in commands if " run backup-restore " in c]
        assert len(runs) == 5  # snapshots, the key, two databases, the media
        for command in runs:
            pod = _overrides(command)
            pod.update(kind="Pod", metadata={"name": "backup-restore"})
            kubernetes_validate.validate(pod, "1.33.0", strict=True)
        assert any(c.endswith("deployment/synapse-proxy deployment/mas") for c in commands)


def test_mas_stops_and_starts_with_synapse_on_docker() -> None:
    cfg = _cfg(with_backup(PUBLIC | {"mas": {"enabled": True}}))
    commands = [s.command for s in render.restore_procedure(cfg, stack_view(cfg), render.databases(stack_view(cfg)), "prod")]
    # Found by their service label: a container replaced new first has a name of its revision.
    each = "do docker ps -aq --filter label=matrix-stack.service=$s; done)"
    assert f"docker stop $(for s in mas synapse-proxy synapse-main; {each}" in commands
    assert f"docker start $(for s in synapse-main synapse-proxy mas; {each}" in commands


def test_a_monolith_keeps_its_media_claim_when_backups_are_switched_on(program: Any) -> None:
    """On a monolith only main writes the media store: its StatefulSet keeps its claim template
    with or without backups (a template is immutable, and a new standalone claim would start
    empty), and the backup pod mounts main's claim read-only on main's node."""
    raw, secret = _stack("prod")
    raw["synapse"] = {**raw["synapse"], "workers": {"preset": "monolith"}}
    before = {**raw, "backup": {"enabled": False}}
    manifests = [program(r, secret_keys=secret, stack="prod").deployment.manifests for r in (before, raw)]
    for m in manifests:
        templates = m["statefulset-synapse-main"]["spec"]["volumeClaimTemplates"]
        assert [t["metadata"]["name"] for t in templates] == ["synapse-media"]
        assert "persistentvolumeclaim-synapse-media" not in m
    pod = manifests[1]["cronjob-backup"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [media] = [v for v in pod["volumes"] if v["name"] == "synapse-media"]
    assert media["persistentVolumeClaim"] == {"claimName": "synapse-media-synapse-main-0", "readOnly": True}
    [term] = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/name"] == "synapse-main"
    assert term["topologyKey"] == "kubernetes.io/hostname"


def test_an_external_database_is_restored_by_a_pod_that_reads_its_password_from_the_secret() -> None:
    import kubernetes_validate

    raw = with_backup(repository=S3)
    raw.update(target={"kind": "kubernetes", "cert_manager_issuer": "le"},
               synapse={"database": {"kind": "external", "host": "db.example.net", "name": "synapse",
                                     "user": "synapse"}},
               database_password=SECRET, backup_s3_access_key_id=SECRET, backup_s3_secret_access_key=SECRET)
    cfg = _cfg(raw)
    commands = [s.command for s in render.restore_procedure(cfg, stack_view(cfg), render.databases(stack_view(cfg)), "prod")]
    [made] = [c for c in commands if "create secret generic backup-restore-env" in c]
    assert '"$PGPASSWORD"' in made
    [restore] = [c.split(" | ")[1] for c in commands if " run backup-pg-restore " in c]
    assert "$PGPASSWORD" not in restore
    word = next(w for w in shlex.split(restore) if w.startswith("--overrides="))
    pod = json.loads(word.split("=", 1)[1])
    assert pod["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["key"] == "PGPASSWORD"
    pod.update(kind="Pod", metadata={"name": "backup-pg-restore"})
    kubernetes_validate.validate(pod, "1.33.0", strict=True)
