"""The upgrade drill: a worker cluster at the previous Synapse release (from PyPI) holding rooms,
messages, media and a device is upgraded to the pinned release the way the stack does it, while
a client keeps using it:

  1. the upgrade gate (components/synapse/upgrade.py), the very script the stack renders, run in
     this machine's operator verbs: it reads the schema and dumps the database;
  2. main replaced (stopped, started at the new release, healthy once it has migrated the
     schema), while the old workers keep running;
  3. then the workers, each started once main answers at its release (the rendered wait), as
     the Docker target replaces them, all at once: the generic worker, whose instances are
     interchangeable, new first (a second instance beside the old one, the proxy moved to it
     with a graceful reload, then the old one stopped); the event persister and the media
     repository, one instance each, stopped and started.

Then every event, media file and device is still there, sessions still work, and Element X's
readiness check passes. The client-visible outage is printed. Last, the gate rendered for a
release that cannot read the upgraded database refuses it, and main is left untouched.

Not skipped anywhere: the releases come from `python -m tests.integration.synapse_releases`
(scripts/test), and a missing one fails with that command.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stack
from components import catalog
from components.platform.contract import OneShot
from components.synapse import upgrade
from components.view import resolve
from config import images

from . import synapse_releases as releases
from .clients import REQUIREMENTS, run_check, verdicts
from .cluster import PG_BIN, PROXY_URL, Cluster, boot_config, render, synapse_python

# Main, the event persister (the events' writer), the media repository (the media's) and one
# generic worker (everything else): each process kind an upgrade restarts differently.
COUNTS = {"generic": 1, "event_persister": 1, "media_repository": 1}
PASSWORD = "correct-horse-battery-staple"
DEVICE = "DRILLPHONE"
MESSAGES = 12
PROBE_INTERVAL_S = 0.25
# The delta the pinned release adds to schema 94 over the previous one: main must have applied it.
NEW_DELTA = "94/11_destination_room_sticky_events.sql"


class Loopback:
    """The operator's verbs (contract.Target) for processes on this machine: what `docker exec`
    into the database's container and `docker run` of an image do, done here. Only the verbs the
    upgrade gate uses."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def exec_command(self, service: str, stateful: bool, command: str, *, stdin: bool = False) -> str:
        assert service == "synapse-postgres", service
        port = next(p.port for p in self.cluster.services[service]["service"].ports)
        # The server's own socket, as `docker exec` reaches it inside the container.
        return (f"env PATH={shlex.quote(str(PG_BIN))}:\"$PATH\" PGHOST={shlex.quote(str(self.cluster.base / 'pg-socket'))} "
                f"PGPORT={port} {command}")

    def run_once(self, run: OneShot) -> str:
        # The image's Python: the pinned and the previous releases' virtualenvs, or the package
        # files of the release that cannot read the upgraded database.
        assert run.args[0] == "python" and run.replaces_entrypoint, run
        tag = upgrade.release_label(run.image)
        if tag == f"v{releases.UNREADABLE}":
            python = f"env PYTHONPATH={shlex.quote(str(releases.unreadable_tree()))} {shlex.quote(sys.executable)}"
        elif tag == f"v{releases.PREVIOUS}":
            python = shlex.quote(str(releases.previous_python()))
        else:
            python = shlex.quote(self.cluster.python)
        return f"{python} {shlex.join(run.args[1:])}"

    def run_scheduled(self, service: str, command: str, user: str | None) -> str:
        raise AssertionError("the drill's stack takes no backups")


def _raw(image: str) -> dict[str, Any]:
    raw = boot_config(COUNTS)
    raw["synapse"]["image"] = image
    return raw


def _gate(image: str, cluster: Cluster, workdir: Path) -> subprocess.CompletedProcess[str]:
    """The gate the stack renders before main starts `image`, in this machine's verbs, run as
    the pulumi-command resource runs it (/bin/sh -c, in the operator's directory)."""
    cfg = stack.parse(_raw(image))
    view, _parts = resolve(cfg, catalog.PARTS)
    view = dataclasses.replace(view, target=Loopback(cluster))  # type: ignore[arg-type]
    gate = upgrade.gate(cfg, view)
    assert gate.after == ("synapse-postgres",)
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["/bin/sh", "-c", gate.script], cwd=workdir, capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- a plain Matrix client


def _call(method: str, path: str, token: str | None = None, body: Any = None, *, raw: bytes | None = None,
          content_type: str = "application/json", timeout: float = 30) -> Any:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(PROXY_URL + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        payload = resp.read()
    return payload if raw is not None or path.startswith("/_matrix/client/v1/media/download") else json.loads(payload)


def _login(user: str, device: str | None = None) -> str:
    body: dict[str, Any] = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                            "password": PASSWORD}
    if device:
        body |= {"device_id": device, "initial_device_display_name": "drill phone"}
    return str(_call("POST", "/_matrix/client/v3/login", body=body)["access_token"])


@dataclasses.dataclass
class Written:
    token: str = ""  # alice's session on DEVICE, kept across the upgrade
    rooms: list[str] = dataclasses.field(default_factory=list)
    events: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # event id -> (room, body)
    media: dict[str, str] = dataclasses.field(default_factory=dict)  # mxc -> sha256


def write(cluster: Cluster) -> Written:
    for user in ("alice", "bob"):
        cluster.register(user, PASSWORD)
    written = Written(token=_login("alice", DEVICE))
    bob = _login("bob")
    for i in range(2):
        room = _call("POST", "/_matrix/client/v3/createRoom", written.token,
                     {"name": f"drill {i}", "invite": ["@bob:localhost"]})["room_id"]
        _call("POST", f"/_matrix/client/v3/join/{room}", bob, {})
        written.rooms.append(room)
    for i in range(MESSAGES):
        room = written.rooms[i % 2]
        body = f"before the upgrade {i}"
        event = _call("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/before-{i}", written.token,
                      {"msgtype": "m.text", "body": body})["event_id"]
        written.events[event] = (room, body)
    blob = os.urandom(96 * 1024)
    mxc = _call("POST", "/_matrix/media/v3/upload?filename=drill.bin", written.token, raw=blob,
                content_type="application/octet-stream")
    mxc = json.loads(mxc)["content_uri"]
    written.media[mxc] = hashlib.sha256(blob).hexdigest()
    room = written.rooms[0]
    event = _call("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/file", written.token,
                  {"msgtype": "m.file", "body": "drill.bin", "url": mxc})["event_id"]
    written.events[event] = (room, "drill.bin")
    return written


class Client(threading.Thread):
    """A client using the stack through the proxy all along the upgrade: every PROBE_INTERVAL_S it
    asks for the versions (main's route), its own session (a worker's) and sends a message (the
    event writer's). Each attempt is (seconds since start, what, ok)."""

    def __init__(self, token: str, room: str):
        super().__init__(daemon=True)
        self.token, self.room = token, room
        self.attempts: list[tuple[float, str, bool]] = []
        self.sent: dict[str, str] = {}  # event id -> body, of the messages that were accepted
        self.halt = threading.Event()
        self.started_at = time.monotonic()
        self.marks: dict[str, float] = {}  # the upgrade's steps, in the same clock

    def _try(self, what: str, call: Any) -> None:
        t = time.monotonic() - self.started_at
        try:
            call()
            self.attempts.append((t, what, True))
        except (urllib.error.URLError, OSError, ValueError):
            self.attempts.append((t, what, False))

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            n += 1
            body = f"during the upgrade {n}"

            def send(n: int = n, body: str = body) -> None:
                event = _call("PUT", f"/_matrix/client/v3/rooms/{self.room}/send/m.room.message/during-{n}",
                              self.token, {"msgtype": "m.text", "body": body}, timeout=10)["event_id"]
                self.sent[event] = body

            self._try("versions", lambda: _call("GET", "/_matrix/client/versions", timeout=10))
            self._try("whoami", lambda: _call("GET", "/_matrix/client/v3/account/whoami", self.token, timeout=10))
            self._try("send", send)
            self.halt.wait(PROBE_INTERVAL_S)

    def failure_windows(self) -> list[tuple[float, float, str]]:
        """(first, last failure, kinds) of each run of consecutive rounds with a failure."""
        windows: list[tuple[float, float, set[str]]] = []
        for t, what, ok in self.attempts:
            if ok:
                continue
            if windows and t - windows[-1][1] <= 3 * PROBE_INTERVAL_S + 1:
                windows[-1] = (windows[-1][0], t, windows[-1][2] | {what})
            else:
                windows.append((t, t, {what}))
        return [(a, b, ",".join(sorted(k))) for a, b, k in windows]

    def outages(self) -> dict[str, float]:
        """Per request kind, the longest time between its last success before failures and its
        first success after them (0: it never failed)."""
        longest: dict[str, float] = {}
        for what in ("versions", "whoami", "send"):
            seen = [(t, ok) for t, w, ok in self.attempts if w == what]
            last_ok, worst, failing = 0.0, 0.0, False
            for t, ok in seen:
                if ok:
                    if failing:
                        worst = max(worst, t - last_ok)
                    last_ok, failing = t, False
                else:
                    failing = True
            if failing:
                worst = max(worst, seen[-1][0] - last_ok)
            longest[what] = worst
        return longest


def _worker_wait_ok(cluster: Cluster, worker: str, python: str) -> bool:
    """The rendered wait a worker's start runs (Docker: its start command; Kubernetes: its init
    container), once, with `python`'s release: does main answer at that release?"""
    wait = cluster.services[worker]["service"].waits[0]
    assert wait.service == "synapse-main" and wait.command[0] == "python"
    code = wait.command[2].replace("synapse-main", cluster.address)
    return subprocess.run([python, "-c", code], capture_output=True, timeout=30).returncode == 0


@dataclasses.dataclass
class Drill:
    cluster: Cluster
    written: Written
    client: Client
    gate: subprocess.CompletedProcess[str]
    dumps: Path
    waits_before: dict[str, bool]  # worker -> its wait passed while main ran the old release
    waits_after: dict[str, bool]
    main_up_s: float  # main stopped to main healthy at the new release
    workers_up_s: float
    upgrade_s: float
    ready_s: dict[str, float]  # each worker's replacement: started to healthy


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    if releases.missing():
        raise RuntimeError(f"the upgrade drill needs {', '.join(releases.missing())}: run `{releases.INSTALL}`")
    before = render(_raw(f"matrixdotorg/synapse:v{releases.PREVIOUS}"))
    after = render(_raw(images.SYNAPSE))
    # The image is all that changes: every file every process reads is the same.
    files = [{e["service"].name: e["files"] for e in run.services} for run in (before, after)]
    assert files[0] == files[1]
    new_python = synapse_python()
    with Cluster(before, python=str(releases.previous_python())) as cluster:
        written = write(cluster)
        client = Client(written.token, written.rooms[1])
        client.start()
        time.sleep(2)  # the client's steady state, before the upgrade
        t0 = time.monotonic()
        dumps = tmp_path_factory.mktemp("operator")
        gate = _gate(images.SYNAPSE, cluster, dumps)
        assert gate.returncode == 0, gate.stdout + gate.stderr
        workers = cluster.worker_names()
        waits_before = {w: _worker_wait_ok(cluster, w, new_python) for w in workers}
        t1 = time.monotonic()
        client.marks["main replaced"] = t1 - client.started_at
        cluster.replace_synapse(["synapse-main"], new_python)
        main_up_s = time.monotonic() - t1
        waits_after = {w: _worker_wait_ok(cluster, w, new_python) for w in workers}
        t2 = time.monotonic()
        client.marks["workers replaced"] = t2 - client.started_at
        replaced = cluster.replace_synapse(workers, new_python)
        workers_up_s = time.monotonic() - t2
        ready_s = {p.name: p.ready_s or 0.0 for p in replaced}
        client.marks["workers healthy"] = time.monotonic() - client.started_at
        upgrade_s = time.monotonic() - t0
        time.sleep(2)
        client.halt.set()
        client.join(timeout=30)
        yield Drill(cluster, written, client, gate, dumps, waits_before, waits_after, main_up_s, workers_up_s,
                    upgrade_s, ready_s)


def test_the_upgrade_runs_main_first_then_the_workers_and_prints_the_outage(drill: Drill) -> None:
    outages = drill.client.outages()
    print(f"\nSynapse {releases.PREVIOUS} -> {images.SYNAPSE_VERSION}: upgrade {drill.upgrade_s:.1f}s "
          f"(main {drill.main_up_s:.1f}s, workers {drill.workers_up_s:.1f}s); client-visible outage "
          + ", ".join(f"{what} {s:.1f}s" for what, s in outages.items())
          + f"; {sum(1 for a in drill.client.attempts if not a[2])} of {len(drill.client.attempts)} requests failed")
    print("  each worker's replacement, started to healthy: "
          + ", ".join(f"{name} {s:.1f}s" for name, s in sorted(drill.ready_s.items())))
    print("  steps: " + ", ".join(f"{step} at {t:.1f}s" for step, t in drill.client.marks.items())
          + "; failures: " + ", ".join(f"{a:.1f}-{b:.1f}s ({k})" for a, b, k in drill.client.failure_windows()))
    # A worker of the new release does not start while main runs the old one, and does once
    # main has migrated: the wait each worker's start runs, against the real processes.
    assert not any(drill.waits_before.values()), drill.waits_before
    assert all(drill.waits_after.values()), drill.waits_after
    # Main applied the new release's migration.
    assert drill.cluster.psql(f"SELECT count(*) FROM applied_schema_deltas WHERE file = '{NEW_DELTA}'") == "1"
    for name in drill.cluster.synapse_names():
        server = urllib.request.urlopen(drill.cluster.health_url(name), timeout=5).headers["Server"]
        assert server.split()[0] == f"Synapse/{images.SYNAPSE_VERSION}", (name, server)
    # The generic worker's routes never failed: its replacement served before its predecessor
    # stopped (only the single-instance writers' routes may fail, for one restart).
    assert outages["versions"] == 0 and outages["whoami"] == 0, outages
    # The client recovered: its last requests of each kind succeeded.
    for what in outages:
        assert [ok for _t, w, ok in drill.client.attempts if w == what][-1], what


def test_a_dump_is_taken_and_named_before_main_starts_the_new_release(drill: Drill) -> None:
    dumps = sorted(drill.dumps.glob("synapse-before-*.dump"))
    assert len(dumps) == 1, drill.gate.stdout
    assert dumps[0].name.startswith(f"synapse-before-v{images.SYNAPSE_VERSION}-")
    assert str(dumps[0]) in drill.gate.stdout
    # pg_restore reads it, and it holds the events written before the upgrade.
    listing = subprocess.run([str(PG_BIN / "pg_restore"), "--list", str(dumps[0])], capture_output=True, text=True,
                             check=True).stdout
    assert "TABLE DATA public events" in listing and "TABLE DATA public schema_version" in listing


def test_every_event_media_file_and_device_is_kept(drill: Drill) -> None:
    token, written = drill.written.token, drill.written
    # The session made before the upgrade is still valid, on its device.
    assert _call("GET", "/_matrix/client/v3/account/whoami", token)["device_id"] == DEVICE
    devices = {d["device_id"]: d for d in _call("GET", "/_matrix/client/v3/devices", token)["devices"]}
    assert devices[DEVICE]["display_name"] == "drill phone"
    # Every event written before, and every message the server accepted during the upgrade.
    kept = dict(written.events) | {e: (written.rooms[1], b) for e, b in drill.client.sent.items()}
    assert drill.client.sent, "no message was accepted during the upgrade"
    for event, (room, body) in kept.items():
        content = _call("GET", f"/_matrix/client/v3/rooms/{room}/event/{event}", token)["content"]
        assert content["body"] == body, event
    for room in written.rooms:
        timeline = _call("GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1000", token)["chunk"]
        ids = {e["event_id"] for e in timeline}
        assert {e for e, (r, _b) in kept.items() if r == room} <= ids, room
    for mxc, sha in written.media.items():
        blob = _call("GET", "/_matrix/client/v1/media/download/" + mxc.removeprefix("mxc://"), token)
        assert hashlib.sha256(blob).hexdigest() == sha, mxc


def test_clients_work_after_the_upgrade(drill: Drill) -> None:
    drill.cluster.register("xavier", PASSWORD)
    status, output = run_check(drill.cluster, "http://localhost:8080", "xavier", PASSWORD)
    print("\n" + output)
    assert verdicts(output) == dict.fromkeys(REQUIREMENTS, "PASS"), output
    assert status == 0, output


def test_a_release_that_cannot_read_the_upgraded_database_is_refused_before_main_is_touched(
        drill: Drill, tmp_path: Path) -> None:
    cluster = drill.cluster
    main = cluster.procs["synapse-main"]
    compat = int(cluster.psql("SELECT compat_version FROM schema_compat_version"))
    refused = _gate(f"matrixdotorg/synapse:v{releases.UNREADABLE}", cluster, tmp_path)
    assert refused.returncode != 0
    assert upgrade.REFUSAL in refused.stderr and f"only a Synapse whose schema version is {compat} or later" \
        in refused.stderr and "reads schema versions up to 83" in refused.stderr, refused.stderr
    print("\n" + refused.stderr.strip())
    # Nothing was dumped, and main runs on, untouched, at the upgraded release.
    assert not list(tmp_path.glob("*.dump*"))
    assert main.popen.poll() is None and cluster.procs["synapse-main"] is main
    assert urllib.request.urlopen(f"http://{cluster.address}:{cluster.http_port('synapse-main')}/health",
                                  timeout=5).headers["Server"].split()[0] == f"Synapse/{images.SYNAPSE_VERSION}"
    # The previous release still reads it (its schema version is above the compat version): allowed.
    allowed = _gate(f"matrixdotorg/synapse:v{releases.PREVIOUS}", cluster, tmp_path / "back")
    assert allowed.returncode == 0, allowed.stderr
