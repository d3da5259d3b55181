"""The Docker target's ACME client as rendered, run by the real certbot as its unprivileged user.

certbot at the pinned image's version (its PyPI release of that tag, in .venv-certbot) runs the
rendered /conf/acme/run.sh (only its paths moved under a scratch directory) as the service's
user, against Pebble (Let's Encrypt's test ACME server, from its Go module; its DNS stand-in
answers every name with 127.0.0.1). Pebble fetches each HTTP-01 challenge from the webroot
through a file server that stands in for nginx, running as the proxy's user. Before it, certbot runs as root, as it
did before it ran unprivileged, and the adapter's volume-owner command hands the tree over.
scripts/test builds Pebble and makes .venv-certbot; switching users needs root, as CI runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from components.checks import view_of
from components.tls import ACME_PLACEHOLDER, ACME_SCRIPT, ACME_STATE
from components.view.certificates import ACME_DIR, ACME_SERVED, ACME_WEBROOT
from config import images
from render import offline

ROOT = Path(__file__).resolve().parents[2]
CERTBOT_VERSION = images.CERTBOT.rsplit(":", 1)[1].removeprefix("v")
CERTBOT_BIN = ROOT / ".venv-certbot" / "bin"
PEBBLE_VERSION = "v2.10.3"
PEBBLE_DIR = Path(os.environ.get("PEBBLE_DIR", Path.home() / ".cache" / "matrix-stack" / "go-bin"
                                 / f"pebble-{PEBBLE_VERSION}"))
ACME_URL = "https://127.0.0.1:14000/dir"
CHALLENGE_PORT = 5002  # Pebble's httpPort: where it fetches each HTTP-01 challenge
STACK = {"server_name": "example.org", "tls": {"acme_email": "ops@example.org"},
         "element_call": {"enabled": False}}
ISSUED_WITHIN_S = 120.0


def _require() -> None:
    missing = [str(p) for p in (CERTBOT_BIN / "certbot", PEBBLE_DIR / "pebble", PEBBLE_DIR / "pebble-challtestsrv")
               if not p.exists()]
    if missing:
        raise RuntimeError(f"missing {missing}: scripts/test makes .venv-certbot and builds Pebble {PEBBLE_VERSION}")
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        raise RuntimeError("certbot runs as its service's user and the file server as the proxy's: "
                           "this needs root and setpriv (util-linux)")
    version = subprocess.run([str(CERTBOT_BIN / "certbot"), "--version"], capture_output=True, text=True).stdout
    assert version.split() == ["certbot", CERTBOT_VERSION], f"{CERTBOT_BIN} holds {version!r}"


def _as(user: str) -> list[str]:
    """Run as `user` ("uid:gid"), in no other group."""
    uid, gid = user.split(":")
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


@contextlib.contextmanager
def _pebble(base: Path) -> Iterator[None]:
    config = base / "pebble.json"
    config.write_text(f'''{{"pebble": {{"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
        "certificate": "{PEBBLE_DIR}/localhost/cert.pem", "privateKey": "{PEBBLE_DIR}/localhost/key.pem",
        "httpPort": {CHALLENGE_PORT}, "tlsPort": 5001, "externalAccountBindingRequired": false,
        "profiles": {{"default": {{"description": "90 days", "validityPeriod": 7776000}}}}}}}}''')
    logs = base / "pebble.log"
    with logs.open("w") as log:
        procs = [
            subprocess.Popen([str(PEBBLE_DIR / "pebble-challtestsrv"), "-dnsserver", "127.0.0.1:8053",
                              "-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
                              "-management", "127.0.0.1:8055"], stdout=log, stderr=subprocess.STDOUT),
            # No deliberately refused nonces and no sleep before each check: certbot's retries
            # and Pebble's pauses would only slow the test.
            subprocess.Popen([str(PEBBLE_DIR / "pebble"), "-config", str(config), "-dnsserver", "127.0.0.1:8053"],
                             env={**os.environ, "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_VA_NOSLEEP": "1"},
                             stdout=log, stderr=subprocess.STDOUT),
        ]
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen("http://127.0.0.1:8055/", timeout=1)
                except urllib.error.HTTPError:
                    pass  # challtestsrv answers
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"Pebble did not start:\n{logs.read_text()}") from None
                    time.sleep(0.2)
                    continue
                break
            yield
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=10)


def _relocate(text: str, base: Path) -> str:
    for path in (ACME_DIR, ACME_WEBROOT, ACME_PLACEHOLDER, ACME_STATE["--work-dir"], ACME_STATE["--logs-dir"]):
        text = text.replace(path, f"{base}{path}")
    return text


def _issuer(pem: Path) -> str:
    return subprocess.run(["openssl", "x509", "-noout", "-issuer", "-in", str(pem)],
                          capture_output=True, text=True, check=True).stdout


def test_certbot_issues_and_renews_unprivileged_what_a_root_certbot_left(tmp_path: Path) -> None:
    _require()
    run = offline.run(dict(STACK), stack="acme")
    resolved = next(s for s in run.services if s["service"].name == "acme")
    acme, files = resolved["service"], {f["path"]: f["content"] for f in resolved["files"]}
    proxy_user = next(s["service"].user for s in run.services if s["service"].name == "synapse-proxy")
    names = [c.name for c in view_of(run.cfg)[0].certificates if c.source == "acme"]
    owner_names = {f"matrix-stack-{v.name}-owner" for v in acme.volumes}
    owners = [c.plain_inputs()["entrypoints"] for c in run.of_type("docker:index/container:Container")
              if c.plain_inputs()["name"] in owner_names]
    assert len(owners) == len(acme.volumes) == 2

    # Other users must reach it: pytest's own temporary directory is root's alone.
    base = Path(tempfile.mkdtemp(prefix="acme-client-"))
    os.chmod(base, 0o755)
    try:
        for path in (ACME_DIR, ACME_WEBROOT, ACME_SCRIPT, ACME_PLACEHOLDER):
            (base / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        for path in (ACME_DIR, ACME_WEBROOT):
            (base / path.lstrip("/")).mkdir(exist_ok=True)
        # The scratch directory is a tmpfs the service's user owns (docker.tmpfs_options).
        uid, gid = (int(part) for part in acme.user.split(":"))
        for scratch in acme.writable_paths:
            (base / scratch.lstrip("/")).mkdir(parents=True, exist_ok=True)
            os.chown(base / scratch.lstrip("/"), uid, gid)
        (base / ACME_SCRIPT.lstrip("/")).write_text(_relocate(files[ACME_SCRIPT], base))
        (base / ACME_PLACEHOLDER.lstrip("/")).write_text(files[ACME_PLACEHOLDER])
        shutil.copy(PEBBLE_DIR / "pebble.minica.pem", base / "ca.pem")
        # certbot's own config file (in its XDG home) points it at Pebble: the rendered command is
        # run as it is.
        (base / "xdg" / "letsencrypt").mkdir(parents=True)
        (base / "xdg" / "letsencrypt" / "cli.ini").write_text(f"server = {ACME_URL}\n")
        for entry in [base, *base.rglob("*")]:
            if entry.stat().st_uid == 0:
                os.chmod(entry, 0o755 if entry.is_dir() else 0o644)
        output = _run_stack(base, acme.user, proxy_user, files[ACME_SCRIPT], names, owners, tmp_path)
        print(f"\n{output}")

        served = base / ACME_SERVED.lstrip("/")
        archive = base / ACME_DIR.lstrip("/") / "archive"
        assert (archive / names[0] / "cert2.pem").exists(), "the root-made certificate was not renewed"
        for name in names:
            assert "Pebble" in _issuer(served / name / "fullchain.pem"), name
            for pem in ("fullchain.pem", "privkey.pem"):
                stat = (served / name / pem).stat()
                assert (stat.st_uid, stat.st_gid, stat.st_mode & 0o777) == (uid, gid, 0o440), (name, pem)
                # The proxy's user reads the copies, and nothing of certbot's own.
                read = subprocess.run([*_as(proxy_user), "cat", str(served / name / pem)], capture_output=True)
                assert read.returncode == 0 and read.stdout.startswith(b"-----BEGIN"), (name, pem)
            assert subprocess.run([*_as(proxy_user), "ls", str(archive / name)], capture_output=True).returncode != 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_stack(base: Path, user: str, proxy_user: str, script: str, names: list[str], owners: list[list[str]],
               logs: Path) -> str:
    """Pebble, the webroot's file server, certbot as root once, the owner commands, then the
    rendered script as `user` until every name is served with Pebble's certificate. Its output."""
    env = {"PATH": f"{CERTBOT_BIN}:/usr/bin:/bin", "HOME": "/", "XDG_CONFIG_HOME": f"{base}/xdg",
           "REQUESTS_CA_BUNDLE": f"{base}/ca.pem"}
    certbot = next(line for line in script.splitlines() if "certbot certonly" in line).split("||")[0].strip()
    # As certbot ran before: root's, its work and logs elsewhere (a container's scratch does not last).
    as_root = _relocate(certbot.replace('"$name"', names[0]), base).replace(f"{base}/tmp/", f"{base}/root-tmp/")
    served = base / ACME_SERVED.lstrip("/")
    web = subprocess.Popen([*_as(proxy_user), str(CERTBOT_BIN / "python"), "-m", "http.server", str(CHALLENGE_PORT),
                            "--bind", "127.0.0.1", "--directory", f"{base}{ACME_WEBROOT}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    output = logs / "acme.log"
    try:
        with _pebble(logs):
            done = subprocess.run(["sh", "-c", as_root], env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            # Due at once (a certbot setting of the lineage), so the unprivileged run renews it.
            renewal = base / ACME_DIR.lstrip("/") / "renewal" / f"{names[0]}.conf"
            renewal.write_text("renew_before_expiry = 365 days\n" + renewal.read_text())  # a top-level key
            for command in owners:
                subprocess.run(_relocate(" ".join(command), base).split(), check=True)
            with output.open("w") as out:
                acme_run = subprocess.Popen([*_as(user), "sh", f"{base}{ACME_SCRIPT}"], env=env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    deadline = time.monotonic() + ISSUED_WITHIN_S
                    while not all((served / n / "fullchain.pem").exists()
                                  and "Pebble" in _issuer(served / n / "fullchain.pem") for n in names):
                        assert acme_run.poll() is None, f"the script ended:\n{output.read_text()}"
                        assert time.monotonic() < deadline, f"not every name issued:\n{output.read_text()}"
                        time.sleep(1)
                finally:
                    os.killpg(acme_run.pid, 15)
                    acme_run.wait(timeout=10)
    finally:
        web.terminate()
        web.wait(timeout=10)
    return output.read_text()
