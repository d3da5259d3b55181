"""The backup jobs as target-neutral services (pure: secrets come in as values).

A target whose scheduled services run steps (Target.scheduled_steps; Kubernetes): one scheduled
service per job (`backup`, `backup-check`); the backup's dump runs first in the PostgreSQL image
(its `steps`), in the same pod, sharing the scratch directory. Otherwise (Docker): the same two
scheduled services (BusyBox crond in the restic image runs them as nobody), and `backup-dump`,
the PostgreSQL image waiting for dump requests in the scratch volume, because a Docker host has
no pod to run two images in turn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pulumi

from components.network import host_network
from components.platform.spec import File, Resources, Service, Step, Volume
from components.platform.targets import target_of
from components.view import StackView
from config import images
from config.model import S3Repository, SftpRepository, StackConfig, VolumeRepository

from . import render
from .render import Database

# Secrets the jobs read: the repository's password (generated), each database's password and
# the key files (the owning part's), the repository's credentials (config secrets).
PASSWORD = "restic_password"
SCRATCH_VOLUME = "backup-scratch"


def _pgpass(databases: Sequence[Database], passwords: Sequence[pulumi.Input[str]]) -> pulumi.Input[str]:
    if all(isinstance(p, str) for p in passwords):
        return render.pgpass(databases, [str(p) for p in passwords])
    return pulumi.Output.all(*passwords).apply(lambda values: render.pgpass(databases, values))


def _s3_env(secrets: Mapping[str, pulumi.Input[str]]) -> pulumi.Input[str]:
    key_id, key = secrets["s3_access_key_id"], secrets["s3_secret_access_key"]
    if isinstance(key_id, str) and isinstance(key, str):
        return render.s3_env(key_id, key)
    return pulumi.Output.all(key_id, key).apply(lambda values: render.s3_env(values[0], values[1]))


def dump_service(cfg: StackConfig) -> str:
    """The service that dials the databases: the backup job, whose dump is its step where the
    target runs scheduled steps (Kubernetes), else the dump service beside the jobs (Docker)."""
    return render.BACKUP_SERVICE if target_of(cfg).scheduled_steps else render.DUMP_SERVICE


def dump_user(view: StackView) -> str | None:
    return images.facts_for(render.dump_image(view)).user


def database_secrets(databases: Sequence[Database]) -> list[str]:
    """The secret holding each database's password, in render.databases order: names the
    owning parts share with the backup (Contribution.shared_secrets)."""
    return [db.password_secret for db in databases]


def services(cfg: StackConfig, view: StackView, databases: Sequence[Database],
             secrets: Mapping[str, pulumi.Input[str]], database_passwords: Sequence[pulumi.Input[str]]) -> list[Service]:
    """The backup's services. `secrets`: restic_password, signing_key, and the repository's
    credentials (s3_access_key_id and s3_secret_access_key, or sftp_private_key)."""
    # One scheduled job that runs the dump as its step (Kubernetes: in the same pod), or the jobs
    # beside a dump service that answers their requests (Docker).
    dump_as_step = view.target.scheduled_steps
    repo = cfg.backup.repository
    scripts = [File(render.BACKUP_SCRIPT, render.backup_script(cfg, view, databases), mode=0o555)]
    secret_files = [File(render.PASSWORD_FILE, secrets[PASSWORD], secret=True, mode=0o400)]
    for name in render.key_files(view):
        secret_files.append(File(f"{render.KEYS}/{name}", secrets[name], secret=True, mode=0o400))
    if isinstance(repo, S3Repository):
        secret_files.append(File(render.S3_ENV_FILE, _s3_env(secrets), secret=True, mode=0o400))
    if isinstance(repo, SftpRepository):
        secret_files.append(File(render.SFTP_KEY_FILE, secrets["sftp_private_key"], secret=True, mode=0o400))
        scripts.append(File(render.KNOWN_HOSTS_FILE, render.known_hosts(cfg) + "\n"))
    dump_files = [File(render.DUMP_SCRIPT, render.dump_script(cfg, databases), mode=0o555),
                  File(render.PGPASS_FILE, _pgpass(databases, database_passwords), secret=True, mode=0o400)]
    media = view.media_store
    volumes = [Volume(media.volume, media.path, read_only=True)] if media is not None else []
    if isinstance(repo, VolumeRepository):
        volumes.append(Volume(repo.name, render.REPOSITORY_MOUNT, size=repo.size))
    resources = Resources(cpu_request="100m", memory_request="256Mi", memory_limit="2Gi")
    schedule, check_schedule = cfg.backup.schedule, cfg.backup.check_schedule
    # The dumps and restic's cache: a volume, since a database's dump outgrows a scratch dir.
    scratch = Volume(SCRATCH_VOLUME, render.SCRATCH, size="20Gi")
    if dump_as_step:
        # The media store's owner, so nothing needs root; the claims' group (fsGroup) lets it
        # write the repository and the scratch claim. The dump runs first in the same pod, as
        # the PostgreSQL image's user.
        # Without a media store to read (media in a bucket), nobody's: the restic image has no
        # user of its own, and Pod Security `restricted` refuses root.
        user = media.owner if media is not None else render.NOBODY
        dump_step = Step("dump", render.dump_image(view), ("/bin/sh", render.DUMP_SCRIPT), user=dump_user(view))
        # Its dump step dials the external databases too (the bundled one admits it by name).
        external = [db.host for db in databases if db.service is None]
        backup = _job(cfg, render.BACKUP_SERVICE, "backup", schedule, [*scripts, *secret_files, *dump_files],
                      [*volumes, scratch], resources, user=user, steps=(dump_step,), reaches=_reports(view),
                      databases=("external PostgreSQL",) if any(not host_network(h) for h in external) else (),
                      networks=tuple(dict.fromkeys(c for h in external for c in host_network(h))))
        check = _job(cfg, render.CHECK_SERVICE, "check", check_schedule, [*scripts, *secret_files],
                     [*volumes, scratch], resources, user=user)
        return [backup, check]
    # Docker: crond runs the jobs, and the dump service runs, as render.jobs_user. The scratch
    # volume and a volume repository are handed to that user recursively: dumps from before
    # (root's, then PostgreSQL's user's) are there, and the repository was root's until now.
    # The media are read as they are: Synapse writes them readable by all (Docker's umask 022).
    nobody = render.jobs_user(cfg)
    assert nobody is not None, "a target without pods runs the schedule itself"
    scratch = dataclasses.replace(scratch, owner=nobody, owner_recursive=True)
    volumes = [dataclasses.replace(v, owner=nobody, owner_recursive=True) if v.path == render.REPOSITORY_MOUNT
               else v for v in volumes]
    backup = _job(cfg, render.BACKUP_SERVICE, "backup", schedule, [*scripts, *secret_files], [*volumes, scratch],
                  resources, user=nobody, reaches=_reports(view))
    check = _job(cfg, render.CHECK_SERVICE, "check", check_schedule, [*scripts, *secret_files],
                 [*volumes, scratch], resources, user=nobody)
    dump = Service(
        name=render.DUMP_SERVICE,
        component=render.COMPONENT,
        image=render.dump_image(view),
        entrypoint=("/bin/sh",),
        args=(render.DUMP_SCRIPT,),
        files=dump_files,
        volumes=[scratch],
        user=nobody,
        other_user_because="runs pg_dump, a client that reads none of the image's files, and writes the scratch "
                           "volume it shares with the jobs, which crond runs as nobody",
        read_only_root=True,
        resources=Resources(cpu_request="50m", memory_request="64Mi", memory_limit="1Gi"),
    )
    return [dump, backup, check]


def _reports(view: StackView) -> tuple[tuple[str, int], ...]:
    """The metrics push target the backup reports its success to, when monitoring runs one."""
    push = view.metrics_push_target
    return ((push.service, push.port),) if push is not None else ()


def _job(cfg: StackConfig, name: str, mode: str, schedule: str, files: list[File], volumes: list[Volume],
         resources: Resources, *, user: str | None = None, steps: tuple[Step, ...] = (),
         databases: tuple[str, ...] = (), networks: tuple[str, ...] = (),
         reaches: tuple[tuple[str, int], ...] = ()) -> Service:
    return Service(
        name=name,
        component=render.COMPONENT,
        image=cfg.backup.image,
        entrypoint=("/bin/sh",),
        args=(render.BACKUP_SCRIPT, mode),
        files=list(files),
        volumes=list(volumes),
        user=user,
        read_only_root=True,
        resources=resources,
        schedule=schedule,
        steps=steps,
        # The repository (S3, SFTP) is off the cluster; a volume repository is mounted instead.
        egress_internet=(*(() if isinstance(cfg.backup.repository, VolumeRepository) else ("backup repository",)),
                         *databases),
        egress_networks=networks,
        reaches=reaches,
    )
