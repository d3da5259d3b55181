"""The backup jobs and the restore procedure as rendered, run on one machine against the boot
harness's cluster (tests/integration/cluster.py), with real pg_dump/pg_restore (Debian's
PostgreSQL, the server's major version here) and restic at the pinned image's version.

As the cluster harness does for Synapse's files, only addresses and container paths change:
  - the backup scripts: every container path under a service's root moves under the work
    directory, and `host=<service>` in a connection string becomes the loopback address;
  - libpq's password file: its host field, likewise;
  - the restore procedure's commands: `docker run ... IMAGE ARGS` of the restic image runs the
    restic binary with ARGS (its `-v VOLUME:PATH` mounts must name the volume the render mounts
    at PATH, which relocation already put in place); `docker exec -i SERVICE CMD` runs CMD as
    PostgreSQL's user against that server's socket; `pulumi config set --secret KEY` feeds the
    config the next render reads; `docker stop`/`docker start` of Synapse are the harness's
    own stop and start. Any other command fails the drill.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from components import postgres
from components.backup import render as backup_render
from components.backup import services as backup_services
from components.platform.spec import Service
from components.synapse import homeserver as hs
from config import images
from render import offline
from tests.conftest import stack_view

from .cluster import PG_BIN, Cluster, Relocation, relocation_for

RESTIC_VERSION = images.RESTIC.rsplit(":", 1)[1]
RESTIC_BIN = Path(os.environ.get("RESTIC_BIN", Path.home() / ".cache" / "matrix-stack" / "go-bin"
                                  / f"restic-v{RESTIC_VERSION}" / "restic"))
STACK = "drill"


def require_restic() -> None:
    """Fail (never skip) when restic at the pinned version is missing."""
    if not RESTIC_BIN.exists():
        raise RuntimeError(f"restic {RESTIC_VERSION} is missing at {RESTIC_BIN}: scripts/test builds it from its Go module")
    out = subprocess.run([str(RESTIC_BIN), "version"], capture_output=True, text=True, check=True).stdout
    if f"restic {RESTIC_VERSION} " not in out:
        raise RuntimeError(f"{RESTIC_BIN} is not restic {RESTIC_VERSION}: {out.strip()}")


# ---------------------------------------------------------------- the backup's services


def backup_entries(result: offline.Run, restic_password: str) -> list[dict[str, Any]]:
    """The backup's services with their files, as the render lists them (`service`, `files`).

    The stack renders them when backup is enabled; built here from the pure builder with the
    rendered Synapse secrets when the render has none."""
    rendered = [e for e in result.services if e["service"].component == backup_render.COMPONENT]
    if rendered:
        return rendered
    cfg = result.cfg
    main = next(e for e in result.services if e["service"].name == "synapse-main")
    files = {f["path"]: f["content"] for f in main["files"]}
    secrets = {backup_services.PASSWORD: restic_password,
               **{name: files[path] for name, path in backup_render.key_files(stack_view(cfg)).items()}}
    # Synapse's database password: in its database config file.
    password = yaml.safe_load(files[hs.DATABASE_CONFIG])["database"]["args"]["password"]
    built = backup_services.services(cfg, stack_view(cfg), backup_render.databases(stack_view(cfg))[:1], secrets, [password])
    return [{"service": s, "env": {}, "files": [{"path": f.path, "content": f.content, "secret": f.secret,
                                                   "mode": f.mode, "group": f.group} for f in s.files]}
            for s in built]


@dataclass(frozen=True)
class CronJob:
    """One line of a crontab the Docker target uploads, as BusyBox crond runs it."""

    schedule: str
    command: list[str]
    # "uid:gid" crond starts it as: the crontab file's name, looked up in the image's /etc/passwd.
    user: str


def crontab_jobs(result: offline.Run) -> dict[str, CronJob]:
    """service name -> the job of each crontab the Docker target uploads."""
    from components.platform.docker import CRONTABS, FILES_HOLDER_SUFFIX

    jobs: dict[str, CronJob] = {}
    for container in result.of_type("docker:index/container:Container"):
        inputs = container.plain_inputs()
        for upload in inputs.get("uploads") or []:
            directory, _, user_name = upload["file"].rpartition("/")
            if directory != CRONTABS:
                continue
            [line] = [ln for ln in upload["content"].splitlines() if ln.strip()]
            words = line.split()
            # The image's /etc/passwd, as getpwnam reads it in the container (a name it lacks:
            # crond ignores the file, and no job runs).
            by_name = {name: uid for uid, name in images.facts_for(result.cfg.backup.image).user_names.items()}
            assert user_name == "root" or user_name in by_name, user_name
            # Uploaded to the service's files holder (read-only roots), whose resource is named
            # after the service (its container's name carries a digest of its files).
            jobs[container.name.removesuffix(FILES_HOLDER_SUFFIX)] = CronJob(
                " ".join(words[:5]), shlex.split(" ".join(words[5:])), by_name.get(user_name, "0:0"))
    return jobs


_BY_SERVICE_LABEL = re.compile(
    r"docker (?P<verb>stop|start) \$\(for s in (?P<names>[\w. -]+); "
    r"do docker ps -aq --filter label=matrix-stack\.service=\$s; done\)")
_ABSOLUTE = re.compile(r"(?<![\w.:@-])(/[A-Za-z0-9_.@/-]+)")
_CONNINFO_HOST = re.compile(r"\bhost=([A-Za-z0-9.-]+)")


def shell_text(reloc: Relocation, text: str) -> str:
    """A script with its container paths relocated and the hosts of its connection strings."""
    text = _ABSOLUTE.sub(lambda m: reloc.path(m.group(1)), text)
    return _CONNINFO_HOST.sub(lambda m: "host=" + reloc.host(m.group(1)), text)


def pgpass_text(reloc: Relocation, text: str) -> str:
    return "".join(reloc.host(line.split(":", 1)[0]) + ":" + line.split(":", 1)[1] + "\n"
                   for line in text.splitlines() if line)


def relocation(result: offline.Run, entries: Sequence[dict[str, Any]], base: Path) -> Relocation:
    combined = SimpleNamespace(services=[*result.services, *entries])
    return relocation_for(combined, base)  # type: ignore[arg-type]


def materialize_backup(entries: Sequence[dict[str, Any]], reloc: Relocation) -> None:
    for entry in entries:
        service: Service = entry["service"]
        for f in entry["files"]:
            content = f["content"]
            if f["path"] == backup_render.PGPASS_FILE:
                content = pgpass_text(reloc, content)
            elif f["path"].endswith(".sh"):
                content = shell_text(reloc, content)
            reloc.write(f["path"], content, f["mode"])
        for volume in service.volumes:
            Path(reloc.path(volume.path)).mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------- running the jobs


@dataclass
class BackupRun:
    seconds: float
    summary: dict[str, Any]
    output: str


class Jobs:
    """The backup's services run as their containers would: the dump service waiting for
    requests, the backup job once (crond's run), the check job once."""

    def __init__(self, entries: Sequence[dict[str, Any]], reloc: Relocation, base: Path,
                 crontab: Mapping[str, CronJob] | None = None):
        self.services = {e["service"].name: e["service"] for e in entries}
        self.crontab = dict(crontab or {})
        self.reloc = reloc
        self.base = base
        # restic where any user may run it, as the image's /usr/bin/restic (the build cache is
        # root's alone).
        image_bin = base / "restic-image-bin"
        image_bin.mkdir(exist_ok=True)
        shutil.copy2(RESTIC_BIN, image_bin / "restic")
        self.env = {**os.environ, "PATH": f"{image_bin}:{PG_BIN}:{os.environ.get('PATH', '')}"}

    def _command(self, name: str) -> list[str]:
        """What the container runs: crond's job for a scheduled service (from the crontab the
        Docker target uploads, as the crontab's user), else the container's command."""
        service = self.services[name]
        job = self.crontab.get(name)
        if job is None:
            return [self.reloc.path(a) for a in [*(service.entrypoint or ()), *service.args]]
        return [*self._as_user(service, job.user), *(self.reloc.path(a) for a in job.command)]

    def _as_user(self, service: Service, user: str | None = None) -> list[str]:
        """What Docker does for a service with a user, as root here: its volumes handed to their
        owners first (the volume-owner one-shot), its files its own (the uploads' owner), and
        the command run as that user (`user`: crond's job's, else the container's)."""
        if service.user is None or os.geteuid() != 0:
            return []
        for volume in service.volumes:
            if volume.owner:
                subprocess.run(["chown", *(["-R"] if volume.owner_recursive else []), volume.owner,
                                self.reloc.path(volume.path)], check=True)
        for f in service.files:
            os.chown(self.reloc.path(f.path), *(int(n) for n in service.user.split(":")))
        uid, gid = (user or service.user).split(":")
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]

    def backup(self) -> BackupRun:
        dump = None
        if backup_render.DUMP_SERVICE in self.services:
            log = open(self.base / "logs" / "backup-dump.log", "ab")  # noqa: SIM115 (closed below)
            service = self.services[backup_render.DUMP_SERVICE]
            dump = subprocess.Popen([*self._as_user(service), *self._command(backup_render.DUMP_SERVICE)], stdout=log,
                                    stderr=subprocess.STDOUT, env=self.env, cwd=self.base, start_new_session=True)
        started = time.monotonic()
        try:
            done = subprocess.run(self._command(backup_render.BACKUP_SERVICE), capture_output=True, text=True,
                                  env=self.env, cwd=self.base, timeout=600)
        finally:
            if dump is not None:
                os.killpg(dump.pid, signal.SIGTERM)
                dump.wait(timeout=10)
                log.close()
        seconds = time.monotonic() - started
        if done.returncode != 0:
            dump_log = (self.base / "logs" / "backup-dump.log").read_text(errors="replace")
            raise AssertionError(f"the backup job failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                                 f"dump service:\n{dump_log}")
        summaries = [json.loads(line) for line in done.stdout.splitlines()
                     if line.startswith("{") and '"message_type":"summary"' in line]
        if len(summaries) != 1:
            raise AssertionError(f"expected one restic summary in the backup's output:\n{done.stdout}")
        return BackupRun(seconds, summaries[0], done.stdout + done.stderr)

    def check(self) -> str:
        done = subprocess.run(self._command(backup_render.CHECK_SERVICE), capture_output=True, text=True,
                              env=self.env, cwd=self.base, timeout=600)
        if done.returncode != 0:
            raise AssertionError(f"the check job failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout + done.stderr


# ---------------------------------------------------------------- the restore procedure


@dataclass
class Restore:
    """Runs the rendered Docker restore procedure on loopback (see the module docstring)."""

    cfg: Any
    services: Mapping[str, Service]
    reloc: Relocation
    base: Path
    restic_password: str
    stop_synapse: Callable[[list[str]], None]
    start_synapse: Callable[[list[str]], None]
    pg_socket: Path
    pg_port: int
    config_set: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    # The stack's secret config the procedure reads with `pulumi config get` (a bucket's credentials).
    secret_config: Mapping[str, str] = field(default_factory=dict)
    exported: dict[str, str] = field(default_factory=dict)

    def run(self, steps: Sequence[backup_render.Step], before: Callable[[int, backup_render.Step], None]) -> None:
        for i, step in enumerate(steps):
            before(i, step)
            self.step(step.command)

    def step(self, command: str) -> None:
        if command.startswith("export RESTIC_PASSWORD="):
            wanted = f"pulumi stack output --stack {STACK} --show-secrets backup_repository_password"
            if wanted not in command:
                raise AssertionError(f"the password step does not read the stack output: {command}")
            return  # the stack output is the password the backup service received
        if command.startswith("export AWS_ACCESS_KEY_ID="):
            # export NAME="$(pulumi config get --stack STACK matrix-stack:KEY)" ...: the secret config.
            for name, key in re.findall(r'(\w+)="\$\(pulumi config get --stack ' + STACK + r' matrix-stack:(\w+)\)"',
                                        command):
                self.exported[name] = self.secret_config[key]
            if set(self.exported) != {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}:
                raise AssertionError(f"the credentials step does not read both from the stack's config: {command}")
            return
        # docker stop|start of the services' containers, found by their service label.
        by_label = _BY_SERVICE_LABEL.fullmatch(command)
        if by_label:
            (self.stop_synapse if by_label["verb"] == "stop" else self.start_synapse)(by_label["names"].split())
            return
        sides = [shlex.split(side) for side in command.split(" | ")]
        commands: list[tuple[list[str], dict[str, str]]] = []
        sink: str | None = None
        for i, words in enumerate(sides):
            if words[:3] == ["pulumi", "config", "set"]:
                if i != len(sides) - 1 or i == 0 or "--secret" not in words:
                    raise AssertionError(f"pulumi config set must take a secret from a pipe: {command}")
                sink = words[-1].split(":", 1)[1]
            else:
                commands.append(self.local(words))
        procs: list[tuple[subprocess.Popen[bytes], Any]] = []
        upstream: Any = None
        for argv, env in commands:
            err = tempfile.TemporaryFile()
            proc = subprocess.Popen(argv, stdin=upstream if upstream is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err, env=env, cwd=self.base)
            if upstream is not None:
                upstream.close()  # the next command owns the pipe now
            upstream = proc.stdout
            procs.append((proc, err))
        output = upstream.read() if upstream is not None else b""
        errors = []
        for proc, err in procs:
            proc.wait(timeout=600)
            err.seek(0)
            if proc.returncode != 0:
                errors.append(f"{shlex.join(proc.args)}: exit {proc.returncode}\n{err.read().decode(errors='replace')}")
            err.close()
        if errors:
            raise AssertionError(f"restore step failed: {command}\n" + "\n".join(errors))
        if sink is not None:
            self.config_set[sink] = output.decode()
        self.outputs.append(output.decode(errors="replace"))

    def local(self, words: list[str]) -> tuple[list[str], dict[str, str]]:
        """`docker run`/`docker exec` of a restore step as the loopback command and its environment."""
        env = dict(os.environ)
        if words[:2] == ["docker", "run"]:
            rest = words[2:]
            while rest and rest[0].startswith("-"):
                flag = rest.pop(0)
                if flag in ("--rm", "-i"):
                    continue
                value = rest.pop(0)
                if flag == "-e":
                    name, _, given = value.partition("=")
                    if name == "RESTIC_PASSWORD" and not given:
                        env[name] = self.restic_password
                    elif name in self.exported and not given:
                        env[name] = self.exported[name]  # what the credentials step exported
                    elif name == "AWS_DEFAULT_REGION" and given:
                        env[name] = given
                    else:
                        raise AssertionError(f"unexpected environment in a restore step: {value}")
                elif flag == "-v":
                    self.check_mount(value)
                else:
                    raise AssertionError(f"unexpected docker run flag {flag} in a restore step")
            image, args = rest[0], rest[1:]
            if image != self.cfg.backup.image:
                raise AssertionError(f"a restore step runs {image}, not the pinned restic image")
            return [str(RESTIC_BIN), *(self.reloc.path(a) for a in args)], env
        if words[:3] == ["docker", "exec", "-i"]:
            service, argv = words[3], words[4:]
            if service not in self.services or not self.services[service].image.startswith("postgres:"):
                raise AssertionError(f"a restore step execs into {service}, which is not a PostgreSQL service")
            env.update(PGHOST=str(self.pg_socket), PGPORT=str(self.pg_port))
            tool = str(PG_BIN / argv[0])
            runner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            return [*runner, tool, *argv[1:]], env
        raise AssertionError(f"a restore step the drill cannot run on loopback: {shlex.join(words)}")

    def check_mount(self, mount: str) -> None:
        """A `-v VOLUME:PATH[:ro]` names the Docker volume the render mounts at PATH."""
        parts = mount.split(":")
        volume, path = parts[0], parts[1]
        mounted = {(f"matrix-stack-{v.name}", v.path) for s in self.services.values() for v in s.volumes}
        if (volume, path) not in mounted:
            raise AssertionError(f"the restore mounts {volume} at {path}, which no service mounts there")
        if not Path(self.reloc.path(path)).is_dir():
            raise AssertionError(f"{path} has no relocated directory")


def database_dir(cluster: Cluster) -> Path:
    return Path(cluster.reloc.path(cluster.env_of(postgres.SERVICE)["PGDATA"]))


def du_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
