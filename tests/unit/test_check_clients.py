"""The Element X readiness check: each requirement's verdict for answers that meet it and answers
that do not, the run over a deployment's endpoints, the command line, and the HTTP layer against
a real local HTTP server."""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from render import check_clients as cc
from render.check_clients import Response
from tests.conftest import ROOT
from tests.pki import PrivateCA

BASE = "https://matrix.example.org"


def js(status: int, doc: Any, **headers: str) -> Response:
    return Response(status, json.dumps(doc).encode(), {k.lower().replace("_", "-"): v for k, v in headers.items()})


def unrecognized() -> Response:
    return js(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})


WELL_KNOWN = {"m.homeserver": {"base_url": BASE + "/"}}
CORS = {"Access_Control_Allow_Origin": "*"}
VERSIONS = {"versions": ["v1.12"], "unstable_features": {"org.matrix.simplified_msc3575": True}}
OAUTH = {
    "issuer": "https://auth.example.org/",
    "authorization_endpoint": "https://auth.example.org/authorize",
    "token_endpoint": "https://auth.example.org/oauth2/token",
    "revocation_endpoint": "https://auth.example.org/oauth2/revoke",
    "registration_endpoint": "https://auth.example.org/oauth2/registration",
    "response_types_supported": ["code", "id_token"],
    "response_modes_supported": ["form_post", "query", "fragment"],
    "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
    "code_challenge_methods_supported": ["plain", "S256"],
}
FOCI = [{"type": "livekit", "livekit_service_url": "https://jwt.example.org"}]


# ---------------------------------------------------------------- well-known


def test_well_known_with_cors_passes() -> None:
    verdict = cc.check_well_known(js(200, WELL_KNOWN, **CORS))
    assert verdict.status == "PASS", verdict
    assert BASE in verdict.reason and "/\n" not in verdict.reason


@pytest.mark.parametrize(("resp", "why"), [
    (js(200, WELL_KNOWN), "no Access-Control-Allow-Origin header"),
    (js(200, WELL_KNOWN, Access_Control_Allow_Origin="https://app.example.org"), "Access-Control-Allow-Origin: https://app"),
    (js(404, {}), "HTTP 404"),
    (Response(200, b"<html>", {"access-control-allow-origin": "*"}), "not a JSON object"),
    (js(200, {"m.homeserver": {}}, **CORS), "no m.homeserver.base_url"),
    (js(200, {"m.homeserver": {"base_url": "matrix.example.org"}}, **CORS), "no m.homeserver.base_url"),
    (Response(0, error="Connection refused"), "no answer (Connection refused)"),
])
def test_well_known_fails_with_the_reason(resp: Response, why: str) -> None:
    verdict = cc.check_well_known(resp)
    assert verdict.status == "FAIL"
    assert why in verdict.reason, verdict.reason


# ---------------------------------------------------------------- sliding sync


def test_sliding_sync_advertised_passes() -> None:
    assert cc.check_sliding_sync_advertised(js(200, VERSIONS)).status == "PASS"


@pytest.mark.parametrize(("resp", "why"), [
    (js(200, {"versions": ["v1.12"], "unstable_features": {"org.matrix.simplified_msc3575": False}}), "got False"),
    (js(200, {"versions": ["v1.12"], "unstable_features": {"org.matrix.msc3575": True}}), "got None"),
    (js(200, {"versions": ["v1.12"]}), "no unstable_features"),
    (js(502, {}), "HTTP 502"),
])
def test_sliding_sync_not_advertised_fails(resp: Response, why: str) -> None:
    verdict = cc.check_sliding_sync_advertised(resp)
    assert verdict.status == "FAIL" and why in verdict.reason, verdict


def test_a_sliding_sync_answer_with_a_position_passes() -> None:
    verdict = cc.check_sliding_sync_request(js(200, {"pos": "s1_2", "lists": {"all": {"count": 3}}, "rooms": {}}))
    assert verdict.status == "PASS" and "3 room(s)" in verdict.reason, verdict


@pytest.mark.parametrize(("resp", "why"), [
    (js(404, {"errcode": "M_UNRECOGNIZED"}), "HTTP 404 M_UNRECOGNIZED"),
    (js(200, {"lists": {}}), "without a position"),
    (Response(200, b"not json"), "not 200 with a JSON object"),
])
def test_a_sliding_sync_request_not_answered_fails(resp: Response, why: str) -> None:
    verdict = cc.check_sliding_sync_request(resp)
    assert verdict.status == "FAIL" and why in verdict.reason, verdict


def test_a_sliding_sync_request_without_a_user_is_skipped() -> None:
    assert cc.check_sliding_sync_request(None).status == "SKIP"


# ---------------------------------------------------------------- login


PASSWORD_FLOWS = js(200, {"flows": [{"type": "m.login.password"}, {"type": "m.login.application_service"}]})


def test_password_login_passes_without_oauth() -> None:
    verdict = cc.check_login(PASSWORD_FLOWS, unrecognized())
    assert verdict.status == "PASS" and verdict.reason.startswith("password"), verdict


def test_oauth_metadata_passes() -> None:
    sso_only = js(200, {"flows": [{"type": "m.login.sso", "oauth_aware_preferred": True}]})
    verdict = cc.check_login(sso_only, js(200, OAUTH))
    assert verdict.status == "PASS" and "https://auth.example.org/" in verdict.reason, verdict


def test_neither_password_nor_oauth_fails() -> None:
    verdict = cc.check_login(js(200, {"flows": [{"type": "m.login.sso"}]}), unrecognized())
    assert verdict.status == "FAIL" and "offers m.login.sso" in verdict.reason, verdict
    assert cc.check_login(js(500, {}), unrecognized()).status == "FAIL"


@pytest.mark.parametrize(("change", "why"), [
    ({"issuer": None}, "issuer is None"),
    ({"registration_endpoint": None}, "registration_endpoint is None"),
    ({"revocation_endpoint": "http://auth.example.org/revoke"}, "revocation_endpoint is 'http://"),
    ({"issuer": "https://auth.example.org/?x=1"}, "issuer has a query or fragment"),
    ({"code_challenge_methods_supported": ["plain"]}, "code_challenge_methods_supported lacks S256"),
    ({"grant_types_supported": ["authorization_code"]}, "grant_types_supported lacks refresh_token"),
    ({"response_modes_supported": ["query"]}, "response_modes_supported lacks fragment"),
])
def test_incomplete_oauth_metadata_fails_even_with_a_password_flow(change: dict[str, Any], why: str) -> None:
    # Element X prefers OAuth 2.0 when a homeserver offers it, so broken metadata breaks sign-in.
    verdict = cc.check_login(PASSWORD_FLOWS, js(200, OAUTH | change))
    assert verdict.status == "FAIL" and why in verdict.reason, verdict


def test_oauth_on_plain_http_is_allowed_only_for_a_plain_http_homeserver() -> None:
    plain = {k: v.replace("https://", "http://") if isinstance(v, str) else v for k, v in OAUTH.items()}
    assert cc.check_login(PASSWORD_FLOWS, js(200, plain), secure=True).status == "FAIL"
    assert cc.check_login(PASSWORD_FLOWS, js(200, plain), secure=False).status == "PASS"


# ---------------------------------------------------------------- RTC transports


RTC_VERSIONS = js(200, {"versions": [], "unstable_features": {"org.matrix.msc4143": True}})


def test_rtc_foci_in_the_well_known_pass() -> None:
    verdict = cc.check_rtc_transports(js(200, WELL_KNOWN | {cc.RTC_FOCI: FOCI}), js(200, VERSIONS), None, required=True)
    assert verdict.status == "PASS" and "https://jwt.example.org" in verdict.reason, verdict


def test_rtc_transports_endpoint_passes() -> None:
    verdict = cc.check_rtc_transports(js(200, WELL_KNOWN), RTC_VERSIONS, js(200, {"rtc_transports": FOCI}),
                                      required=True)
    assert verdict.status == "PASS" and cc.RTC_TRANSPORTS in verdict.reason, verdict


def test_no_rtc_transport_passes_unless_calls_are_required() -> None:
    off = cc.check_rtc_transports(js(200, WELL_KNOWN), js(200, VERSIONS), None)
    assert off.status == "PASS" and "calls are off" in off.reason, off
    required = cc.check_rtc_transports(js(200, WELL_KNOWN), js(200, VERSIONS), None, required=True)
    assert required.status == "FAIL" and "no RTC transport advertised" in required.reason, required


@pytest.mark.parametrize(("well_known", "versions", "transports", "why"), [
    (WELL_KNOWN | {cc.RTC_FOCI: [{"type": "livekit"}]}, VERSIONS, None, "no livekit_service_url"),
    (WELL_KNOWN | {cc.RTC_FOCI: {"type": "livekit"}}, VERSIONS, None, "is not a list"),
    (WELL_KNOWN | {cc.RTC_FOCI: [{"type": "nextcloud"}]}, VERSIONS, None, "names no LiveKit transport"),
    (WELL_KNOWN, RTC_VERSIONS.json(), js(200, {}), "rtc_transports is not a list"),
    (WELL_KNOWN | {cc.RTC_FOCI: FOCI}, RTC_VERSIONS.json(), js(404, {"errcode": "M_UNRECOGNIZED"}), "answered HTTP 404"),
])
def test_malformed_rtc_transports_fail(well_known: Any, versions: Any, transports: Response | None, why: str) -> None:
    verdict = cc.check_rtc_transports(js(200, well_known), js(200, versions), transports)
    assert verdict.status == "FAIL" and why in verdict.reason, verdict


def test_an_advertised_endpoint_nobody_could_ask_is_skipped() -> None:
    assert cc.check_rtc_transports(js(200, WELL_KNOWN), RTC_VERSIONS, None).status == "SKIP"


# ---------------------------------------------------------------- media


def test_authenticated_media_passes() -> None:
    verdict = cc.check_media(js(401, {"errcode": "M_MISSING_TOKEN"}), js(200, {"m.upload.size": 52428800}))
    assert verdict.status == "PASS", verdict


@pytest.mark.parametrize(("anonymous", "authed", "why"), [
    (js(200, {"m.upload.size": 1}), js(200, {"m.upload.size": 1}), "not 401: media is not authenticated"),
    (unrecognized(), None, "HTTP 404 M_UNRECOGNIZED, not 401"),
    (js(401, {"errcode": "M_MISSING_TOKEN"}), js(403, {"errcode": "M_FORBIDDEN"}), "with a token answered HTTP 403"),
])
def test_unauthenticated_or_unserved_media_fails(anonymous: Response, authed: Response | None, why: str) -> None:
    verdict = cc.check_media(anonymous, authed)
    assert verdict.status == "FAIL" and why in verdict.reason, verdict


def test_media_without_a_user_is_skipped_when_the_anonymous_half_holds() -> None:
    assert cc.check_media(js(401, {"errcode": "M_MISSING_TOKEN"}), None).status == "SKIP"


# ---------------------------------------------------------------- the run over a deployment


class FakeDeployment:
    """Answers by (method, URL); records every request and the token it carried."""

    def __init__(self, answers: dict[tuple[str, str], Response]):
        self.answers = answers
        self.requests: list[tuple[str, str, str | None, Any]] = []

    def __call__(self, method: str, url: str, *, token: str | None = None, body: Any = None) -> Response:
        self.requests.append((method, url, token, body))
        path = url.split("?", 1)[0]
        if path == BASE + cc.MEDIA_CONFIG:
            return js(200, {"m.upload.size": 1}) if token == "tok" else js(401, {"errcode": "M_MISSING_TOKEN"})
        if path == BASE + cc.SLIDING_SYNC and token != "tok":
            return js(401, {"errcode": "M_MISSING_TOKEN"})
        return self.answers.get((method, path), unrecognized())


def deployment() -> FakeDeployment:
    """A deployment that meets every requirement: example.org's well-known names BASE."""
    return FakeDeployment({
        ("GET", "https://example.org" + cc.WELL_KNOWN_CLIENT): js(200, WELL_KNOWN, **CORS),
        ("GET", BASE + cc.VERSIONS): js(200, VERSIONS),
        ("POST", BASE + cc.LOGIN): js(200, {"access_token": "tok", "device_id": "D"}),
        ("GET", BASE + cc.LOGIN): PASSWORD_FLOWS,
        ("POST", BASE + cc.SLIDING_SYNC): js(200, {"pos": "1", "lists": {"all": {"count": 0}}}),
        ("POST", BASE + cc.LOGOUT): js(200, {}),
    })


def test_a_ready_deployment_passes_every_requirement_with_a_password_login() -> None:
    fake = deployment()
    verdicts = cc.run("https://example.org/", cc.Credentials("alice", "secret"), get=fake)
    assert [(v.requirement, v.status) for v in verdicts] == [
        ("well-known", "PASS"), ("sliding-sync", "PASS"), ("sliding-sync-request", "PASS"), ("login", "PASS"),
        ("rtc-transports", "PASS"), ("media", "PASS")], verdicts
    # The homeserver is the one the well-known names; the password login is logged out at the end.
    assert all(url.startswith(BASE) for _m, url, _t, _b in fake.requests[1:])
    login = next(body for m, url, _t, body in fake.requests if m == "POST" and url == BASE + cc.LOGIN)
    assert login["identifier"] == {"type": "m.id.user", "user": "alice"} and login["password"] == "secret"
    assert fake.requests[-1][:3] == ("POST", BASE + cc.LOGOUT, "tok")


def test_an_access_token_is_used_and_never_logged_out() -> None:
    fake = deployment()
    verdicts = cc.run("https://example.org", cc.Credentials(access_token="tok"), get=fake)
    assert {v.status for v in verdicts} == {"PASS"}, verdicts
    assert not [r for r in fake.requests if r[1] in (BASE + cc.LOGIN, BASE + cc.LOGOUT) and r[0] == "POST"]


def test_without_credentials_the_logged_in_checks_are_skipped() -> None:
    verdicts = {v.requirement: v.status for v in cc.run("https://example.org", cc.Credentials(), get=deployment())}
    assert verdicts == {"well-known": "PASS", "sliding-sync": "PASS", "sliding-sync-request": "SKIP",
                        "login": "PASS", "rtc-transports": "PASS", "media": "SKIP"}


def test_a_refused_password_login_fails_the_logged_in_checks() -> None:
    fake = deployment()
    fake.answers[("POST", BASE + cc.LOGIN)] = js(403, {"errcode": "M_FORBIDDEN"})
    verdicts = {v.requirement: v for v in cc.run("https://example.org", cc.Credentials("alice", "bad"), get=fake)}
    assert verdicts["sliding-sync-request"].status == "FAIL"
    assert "password login as alice failed: HTTP 403 M_FORBIDDEN" in verdicts["sliding-sync-request"].reason
    assert not [r for r in fake.requests if r[1] == BASE + cc.LOGOUT]


def test_an_unserved_sliding_sync_fails() -> None:
    fake = deployment()
    fake.answers[("POST", BASE + cc.SLIDING_SYNC)] = unrecognized()
    verdicts = {v.requirement: v.status for v in cc.run("https://example.org", cc.Credentials("a", "b"), get=fake)}
    assert verdicts["sliding-sync-request"] == "FAIL"


def test_the_rtc_transports_endpoint_is_asked_with_the_token_when_advertised() -> None:
    fake = deployment()
    fake.answers[("GET", BASE + cc.VERSIONS)] = js(200, {"unstable_features": {cc.SLIDING_SYNC_FEATURE: True,
                                                                              cc.RTC_FEATURE: True}})
    fake.answers[("GET", BASE + cc.RTC_TRANSPORTS)] = js(200, {"rtc_transports": FOCI})
    verdicts = {v.requirement: v for v in cc.run("https://example.org", cc.Credentials("a", "b"), calls_required=True,
                                                 get=fake)}
    assert verdicts["rtc-transports"].status == "PASS", verdicts["rtc-transports"]
    assert ("GET", BASE + cc.RTC_TRANSPORTS, "tok", None) in fake.requests


# ---------------------------------------------------------------- the command line


def test_main_reads_the_password_from_the_environment_and_exits_nonzero_on_a_fail(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}

    def fake_run(server: str, creds: cc.Credentials, *, calls_required: bool = False,
                 get: cc.Fetch = cc.fetch) -> list[cc.Verdict]:
        seen.update(server=server, creds=creds, calls=calls_required)
        return [cc.Verdict("well-known", "PASS", "ok"), cc.Verdict("media", "FAIL", "not 401")]

    monkeypatch.setattr(cc, "run", fake_run)
    status = cc.main(["https://example.org", "--user", "alice", "--calls"], environ={cc.PASSWORD_ENV: "s3cret"})
    out = capsys.readouterr().out
    assert status == 1
    assert out.splitlines() == ["PASS well-known: ok", "FAIL media: not 401", "1 passed, 1 failed, 0 skipped"]
    assert seen["creds"] == cc.Credentials("alice", "s3cret") and seen["calls"] is True
    assert "s3cret" not in out


def test_main_refuses_a_user_without_a_password_when_it_cannot_prompt(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))  # noqa: SIM115 - not a terminal: no prompt
    with pytest.raises(SystemExit) as exit_:
        cc.main(["https://example.org", "--user", "alice"], environ={})
    assert exit_.value.code == 2
    assert cc.PASSWORD_ENV in capsys.readouterr().err


def test_main_refuses_a_server_that_is_not_a_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cc.main(["example.org"], environ={})
    assert exit_.value.code == 2
    assert "not an http(s) URL" in capsys.readouterr().err


def test_the_command_needs_only_the_standard_library() -> None:
    # -S: no site-packages, so any third-party import fails.
    done = subprocess.run([sys.executable, "-S", "-m", "render.check_clients", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--access-token" in done.stdout


# ---------------------------------------------------------------- the HTTP layer


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path == cc.WELL_KNOWN_CLIENT:
            body = json.dumps(WELL_KNOWN).encode()
            self.send_response(200)
            self.send_header("Access-Control-Allow-Origin", "*")
        else:
            body = json.dumps({"errcode": "M_UNRECOGNIZED", "auth": self.headers.get("Authorization")}).encode()
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def _serve(tls: ssl.SSLContext | None = None) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def local_server() -> Iterator[str]:
    yield from _serve()


@pytest.fixture
def private_ca(tmp_path: Path) -> PrivateCA:
    return PrivateCA(tmp_path)


@pytest.fixture
def tls_server(private_ca: PrivateCA, tmp_path: Path) -> Iterator[str]:
    chain, key_pem = private_ca.issue("localhost", ("localhost",))
    key = tmp_path / "localhost.key"
    key.write_text(key_pem)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(chain, key)
    yield from _serve(tls)


def test_fetch_returns_headers_errors_and_bodies(local_server: str) -> None:
    ok = cc.fetch("GET", local_server + cc.WELL_KNOWN_CLIENT)
    assert ok.status == 200 and ok.header("access-control-allow-origin") == "*" and ok.json() == WELL_KNOWN
    missing = cc.fetch("GET", local_server + "/nowhere", token="abc")
    assert missing.status == 404 and missing.json() == {"errcode": "M_UNRECOGNIZED", "auth": "Bearer abc"}
    assert missing.describe() == "HTTP 404 M_UNRECOGNIZED"


def test_fetch_reports_no_answer_as_status_zero() -> None:
    with socket_bound() as port:
        refused = cc.fetch("GET", f"http://127.0.0.1:{port}/", timeout=5)
    assert refused.status == 0 and refused.error and refused.describe().startswith("no answer")


class socket_bound:  # noqa: N801 - used as a context manager
    """A port nothing listens on: bound, never listening, so connecting is refused."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *_exc: object) -> None:
        self.sock.close()


def test_oauth_metadata_is_found_at_the_unstable_path_of_older_homeservers() -> None:
    fake = deployment()
    fake.answers[("GET", BASE + cc.AUTH_METADATA_UNSTABLE)] = js(200, OAUTH)
    fake.answers[("GET", BASE + cc.LOGIN)] = js(200, {"flows": [{"type": "m.login.sso"}]})
    verdicts = {v.requirement: v for v in cc.run("https://example.org", cc.Credentials(), get=fake)}
    assert verdicts["login"].status == "PASS", verdicts["login"]
    assert cc.AUTH_METADATA_UNSTABLE in verdicts["login"].reason


def test_the_stable_oauth_metadata_is_judged_first() -> None:
    fake = deployment()
    fake.answers[("GET", BASE + cc.AUTH_METADATA)] = js(200, OAUTH | {"registration_endpoint": None})
    fake.answers[("GET", BASE + cc.AUTH_METADATA_UNSTABLE)] = js(200, OAUTH)
    verdicts = {v.requirement: v for v in cc.run("https://example.org", cc.Credentials(), get=fake)}
    assert verdicts["login"].status == "FAIL" and cc.AUTH_METADATA + " is unusable" in verdicts["login"].reason
    assert ("GET", BASE + cc.AUTH_METADATA_UNSTABLE, None, None) not in fake.requests


def test_a_private_ca_is_trusted_only_when_given(tls_server: str, private_ca: PrivateCA) -> None:
    untrusted = cc.fetch("GET", tls_server + cc.WELL_KNOWN_CLIENT, timeout=10)
    assert untrusted.status == 0 and "CERTIFICATE_VERIFY_FAILED" in untrusted.error, untrusted
    trusted = cc.fetch("GET", tls_server + cc.WELL_KNOWN_CLIENT, timeout=10,
                       context=ssl.create_default_context(cafile=str(private_ca.path)))
    assert trusted.status == 200 and trusted.json() == WELL_KNOWN


def test_main_refuses_an_unreadable_ca_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cc.main(["https://example.org", "--cacert", str(tmp_path / "missing.pem")], environ={})
    assert exit_.value.code == 2
    assert "--cacert" in capsys.readouterr().err
