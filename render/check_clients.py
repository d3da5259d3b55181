"""python -m render.check_clients https://example.org: is a deployment ready for Element X?

Checks, one line each, what Element X (matrix-rust-sdk) needs from a homeserver:

  well-known     /.well-known/matrix/client on the server name: JSON naming the homeserver,
                 served with Access-Control-Allow-Origin: *
  sliding-sync   /versions advertises simplified sliding sync (org.matrix.simplified_msc3575)
  sliding-sync-request
                 a logged-in user's POST .../org.matrix.simplified_msc3575/sync is answered
  login          a login Element X can use: m.login.password in GET /login, or OAuth 2.0 through
                 the Matrix Authentication Service (/_matrix/client/v1/auth_metadata: an issuer
                 and the endpoints matrix-rust-sdk requires)
  rtc-transports where calls are advertised (the well-known's org.matrix.msc4143.rtc_foci, or
                 org.matrix.msc4143 in /versions and its rtc/transports endpoint), they name a
                 LiveKit service; --calls makes them required
  media          authenticated media: /_matrix/client/v1/media/config answers 401 without a token
                 and 200 with one

--cacert FILE trusts a private CA (a private federation's) instead of the system's roots.
The logged-in checks need --user (password from $MATRIX_PASSWORD, else a prompt that does not
echo) or --access-token (the token from $MATRIX_ACCESS_TOKEN, else a prompt); a password login
is logged out again at the end. Without either they are reported as SKIP. Exit status: 1 when a
requirement fails, 2 on a usage error, else 0.

Standard library only: users run it against their own deployment with any Python >= 3.11.
The checks are pure functions of the responses; `run` is the thin HTTP layer around them.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

WELL_KNOWN_CLIENT = "/.well-known/matrix/client"
VERSIONS = "/_matrix/client/versions"
LOGIN = "/_matrix/client/v3/login"
LOGOUT = "/_matrix/client/v3/logout"
AUTH_METADATA = "/_matrix/client/v1/auth_metadata"
# Where homeservers older than Matrix 1.15 publish it; matrix-rust-sdk asks there second.
AUTH_METADATA_UNSTABLE = "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata"
SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
SLIDING_SYNC_FEATURE = "org.matrix.simplified_msc3575"
RTC_FOCI = "org.matrix.msc4143.rtc_foci"
RTC_FEATURE = "org.matrix.msc4143"
RTC_TRANSPORTS = "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports"
MEDIA_CONFIG = "/_matrix/client/v1/media/config"

PASSWORD_ENV = "MATRIX_PASSWORD"
TOKEN_ENV = "MATRIX_ACCESS_TOKEN"
TIMEOUT_S = 30.0

# What matrix-rust-sdk (through ruma's AuthorizationServerMetadata) refuses OAuth 2.0 metadata
# without: these URLs, and these values among the supported lists. Element X registers itself,
# so it needs dynamic client registration (registration_endpoint) as well.
OAUTH_URLS = ("issuer", "authorization_endpoint", "token_endpoint", "revocation_endpoint", "registration_endpoint")
OAUTH_SUPPORTED: dict[str, tuple[str, ...]] = {
    "response_types_supported": ("code",),
    "response_modes_supported": ("query", "fragment"),
    "grant_types_supported": ("authorization_code", "refresh_token"),
    "code_challenge_methods_supported": ("S256",),
}

Status = Literal["PASS", "FAIL", "SKIP"]


@dataclass(frozen=True)
class Response:
    """One HTTP answer; status 0 with `error` set when no answer came (refused, timeout, TLS)."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)  # names in lower case
    error: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The decoded JSON body, or None when the body is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    def describe(self) -> str:
        if self.status == 0:
            return f"no answer ({self.error})"
        doc = self.json()
        if isinstance(doc, dict) and "errcode" in doc:
            return f"HTTP {self.status} {doc['errcode']}"
        return f"HTTP {self.status}"


@dataclass(frozen=True)
class Verdict:
    requirement: str
    status: Status
    reason: str

    def line(self) -> str:
        return f"{self.status} {self.requirement}: {self.reason}"


def _pass(requirement: str, reason: str) -> Verdict:
    return Verdict(requirement, "PASS", reason)


def _fail(requirement: str, reason: str) -> Verdict:
    return Verdict(requirement, "FAIL", reason)


def _skip(requirement: str, reason: str) -> Verdict:
    return Verdict(requirement, "SKIP", reason)


def _json_object(resp: Response) -> dict[str, Any] | None:
    doc = resp.json()
    return doc if isinstance(doc, dict) else None


def _is_url(value: object, schemes: tuple[str, ...] = ("https", "http")) -> bool:
    if not isinstance(value, str):
        return False
    parts = urllib.parse.urlsplit(value)
    return parts.scheme in schemes and bool(parts.netloc)


# ---------------------------------------------------------------- the checks (pure)


def homeserver_base_url(well_known: Response) -> str | None:
    """m.homeserver.base_url from the client well-known, without a trailing slash."""
    doc = _json_object(well_known) if well_known.status == 200 else None
    homeserver = doc.get("m.homeserver") if doc else None
    base_url = homeserver.get("base_url") if isinstance(homeserver, dict) else None
    return base_url.rstrip("/") if isinstance(base_url, str) and _is_url(base_url) else None


def check_well_known(resp: Response) -> Verdict:
    name = "well-known"
    if resp.status != 200:
        return _fail(name, f"{WELL_KNOWN_CLIENT} answered {resp.describe()}, not 200")
    if _json_object(resp) is None:
        return _fail(name, f"{WELL_KNOWN_CLIENT} is not a JSON object")
    base_url = homeserver_base_url(resp)
    if base_url is None:
        return _fail(name, f"{WELL_KNOWN_CLIENT} has no m.homeserver.base_url URL")
    cors = resp.header("Access-Control-Allow-Origin")
    if cors != "*":
        got = "no Access-Control-Allow-Origin header" if cors is None else f"Access-Control-Allow-Origin: {cors}"
        return _fail(name, f"{WELL_KNOWN_CLIENT} is served with {got}; web clients need '*'")
    return _pass(name, f"homeserver {base_url}, Access-Control-Allow-Origin: *")


def check_sliding_sync_advertised(versions: Response) -> Verdict:
    name = "sliding-sync"
    doc = _json_object(versions) if versions.status == 200 else None
    if doc is None:
        return _fail(name, f"{VERSIONS} answered {versions.describe()} without a JSON object")
    features = doc.get("unstable_features")
    if not isinstance(features, dict):
        return _fail(name, f"{VERSIONS} has no unstable_features")
    if features.get(SLIDING_SYNC_FEATURE) is not True:
        return _fail(name, f"{VERSIONS} does not advertise {SLIDING_SYNC_FEATURE} (got {features.get(SLIDING_SYNC_FEATURE)!r})")
    return _pass(name, f"{VERSIONS} advertises {SLIDING_SYNC_FEATURE}")


def check_sliding_sync_request(resp: Response | None) -> Verdict:
    name = "sliding-sync-request"
    if resp is None:
        return _skip(name, "needs a logged-in user (--user or --access-token)")
    doc = _json_object(resp) if resp.status == 200 else None
    if doc is None:
        return _fail(name, f"POST {SLIDING_SYNC} answered {resp.describe()}, not 200 with a JSON object")
    if not isinstance(doc.get("pos"), str) or not doc["pos"]:
        return _fail(name, f"POST {SLIDING_SYNC} answered without a position (pos)")
    lists = doc.get("lists")
    count = lists.get("all", {}).get("count") if isinstance(lists, dict) else None
    rooms = f", {count} room(s) in the list" if isinstance(count, int) else ""
    return _pass(name, f"POST {SLIDING_SYNC} answered 200 with a position{rooms}")


def _oauth_problems(metadata: dict[str, Any], secure: bool) -> list[str]:
    problems = []
    schemes = ("https",) if secure else ("https", "http")
    for key in OAUTH_URLS:
        if not _is_url(metadata.get(key), schemes):
            problems.append(f"{key} is {metadata.get(key)!r}, not an {'/'.join(schemes)} URL")
    issuer = metadata.get("issuer")
    if isinstance(issuer, str) and urllib.parse.urlsplit(issuer)[3:] != ("", ""):
        problems.append("issuer has a query or fragment")
    for key, wanted in OAUTH_SUPPORTED.items():
        offered = metadata.get(key)
        missing = [w for w in wanted if not isinstance(offered, list) or w not in offered]
        if missing:
            problems.append(f"{key} lacks {', '.join(missing)}")
    return problems


def check_login(login: Response, auth_metadata: Response, *, secure: bool = True,
                metadata_path: str = AUTH_METADATA) -> Verdict:
    """Element X signs in with OAuth 2.0 when the homeserver names an authorization server, else
    with a password. `secure`: the homeserver is on https, so its OAuth URLs must be too.
    `metadata_path`: where `auth_metadata` was answered."""
    name = "login"
    if auth_metadata.status == 200:
        metadata = _json_object(auth_metadata)
        if metadata is None:
            return _fail(name, f"{metadata_path} answered 200 without a JSON object")
        problems = _oauth_problems(metadata, secure)
        if problems:
            # Element X prefers OAuth 2.0 when it is offered: broken metadata breaks sign-in.
            return _fail(name, f"OAuth 2.0 metadata at {metadata_path} is unusable: " + "; ".join(problems))
        return _pass(name, f"OAuth 2.0 through {metadata['issuer']} ({metadata_path})")
    # Otherwise (404 M_UNRECOGNIZED from a homeserver without an authorization server) Element X
    # falls back to the login flows.
    doc = _json_object(login) if login.status == 200 else None
    flows = doc.get("flows") if doc else None
    if not isinstance(flows, list):
        return _fail(name, f"no OAuth 2.0 ({metadata_path}: {auth_metadata.describe()}) and GET {LOGIN} "
                           f"answered {login.describe()} without flows")
    types = [f.get("type") for f in flows if isinstance(f, dict)]
    if "m.login.password" in types:
        return _pass(name, f"password (m.login.password in GET {LOGIN}); no OAuth 2.0 ({auth_metadata.describe()})")
    return _fail(name, f"neither OAuth 2.0 ({metadata_path}: {auth_metadata.describe()}) nor m.login.password "
                       f"(GET {LOGIN} offers {', '.join(map(str, types)) or 'nothing'})")


def _livekit_problems(transports: object, where: str) -> tuple[list[str], list[str]]:
    """(LiveKit service URLs, problems) of a list of RTC transports."""
    if not isinstance(transports, list):
        return [], [f"{where} is not a list"]
    urls, problems = [], []
    for i, transport in enumerate(transports):
        if not isinstance(transport, dict) or not isinstance(transport.get("type"), str):
            problems.append(f"{where}[{i}] has no type")
        elif transport["type"] == "livekit":
            if _is_url(transport.get("livekit_service_url")):
                urls.append(transport["livekit_service_url"])
            else:
                problems.append(f"{where}[{i}] has no livekit_service_url URL")
    if not urls and not problems:
        problems.append(f"{where} names no LiveKit transport")
    return urls, problems


def check_rtc_transports(well_known: Response, versions: Response, transports: Response | None,
                         *, required: bool = False) -> Verdict:
    """Calls are advertised in the client well-known (rtc_foci, which Element Web's Element Call
    widget reads) and/or through the transports endpoint that /versions announces; whichever is
    advertised must name a LiveKit service. `transports` is the endpoint's answer to a logged-in
    user, None when nobody is logged in."""
    name = "rtc-transports"
    wk_doc = _json_object(well_known) if well_known.status == 200 else None
    v_doc = _json_object(versions) if versions.status == 200 else None
    features = v_doc.get("unstable_features") if v_doc else None
    endpoint_on = isinstance(features, dict) and features.get(RTC_FEATURE) is True
    foci = wk_doc.get(RTC_FOCI) if wk_doc else None

    found: list[str] = []
    problems: list[str] = []
    notes: list[str] = []
    if foci is not None:
        urls, bad = _livekit_problems(foci, f"well-known {RTC_FOCI}")
        found += urls
        problems += bad
    if endpoint_on:
        if transports is None:
            notes.append(f"{RTC_TRANSPORTS} not asked: needs a logged-in user")
        else:
            doc = _json_object(transports) if transports.status == 200 else None
            if doc is None:
                problems.append(f"{VERSIONS} advertises {RTC_FEATURE} but {RTC_TRANSPORTS} answered {transports.describe()}")
            else:
                urls, bad = _livekit_problems(doc.get("rtc_transports"), f"{RTC_TRANSPORTS} rtc_transports")
                found += urls
                problems += bad
    if problems:
        return _fail(name, "; ".join(problems))
    if not found:
        if foci is None and not endpoint_on:
            if required:
                return _fail(name, f"no RTC transport advertised (neither {RTC_FOCI} in the well-known "
                                   f"nor {RTC_FEATURE} in {VERSIONS}): Element X offers no calls")
            return _pass(name, "none advertised: calls are off here (--calls makes them required)")
        return _skip(name, "; ".join(notes))
    sources = ([f"well-known {RTC_FOCI}"] if foci is not None else []) + \
        ([RTC_TRANSPORTS] if endpoint_on and transports is not None else [])
    return _pass(name, f"LiveKit at {', '.join(sorted(set(found)))} (from {' and '.join(sources)})"
                 + (f"; {notes[0]}" if notes else ""))


def check_media(anonymous: Response, authenticated: Response | None) -> Verdict:
    name = "media"
    if anonymous.status != 401:
        return _fail(name, f"GET {MEDIA_CONFIG} without a token answered {anonymous.describe()}, not 401: "
                           "media is not authenticated (or not served)")
    if authenticated is None:
        return _skip(name, f"GET {MEDIA_CONFIG} answers 401 without a token; with one needs a logged-in user")
    if authenticated.status != 200 or _json_object(authenticated) is None:
        return _fail(name, f"GET {MEDIA_CONFIG} with a token answered {authenticated.describe()}, not 200")
    return _pass(name, f"GET {MEDIA_CONFIG}: 401 without a token, 200 with one")


# ---------------------------------------------------------------- HTTP


def fetch(method: str, url: str, *, token: str | None = None, body: Any = None,
          timeout: float = TIMEOUT_S, context: ssl.SSLContext | None = None) -> Response:
    """One request; `context`: how to verify TLS (None: the system's trusted roots)."""
    headers = {"Accept": "application/json", "User-Agent": "matrix-stack check_clients"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            return Response(resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()})
    except urllib.error.HTTPError as err:
        return Response(err.code, err.read(), {k.lower(): v for k, v in err.headers.items()})
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return Response(0, error=str(reason))


Fetch = Callable[..., Response]

# The smallest room list Element X's first sync resembles: the newest rooms, one event each.
SLIDING_SYNC_BODY: dict[str, Any] = {
    "lists": {"all": {"ranges": [[0, 19]], "timeline_limit": 1, "required_state": [["m.room.name", ""]]}},
}


@dataclass
class Credentials:
    user: str | None = None
    password: str | None = None
    access_token: str | None = None


def _login(base: str, creds: Credentials, get: Fetch) -> tuple[str | None, str]:
    """(access token, reason when there is none)."""
    if creds.access_token:
        return creds.access_token, ""
    if not creds.user or creds.password is None:
        return None, ""
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": creds.user},
            "password": creds.password, "initial_device_display_name": "matrix-stack check_clients"}
    resp = get("POST", base + LOGIN, body=body)
    doc = _json_object(resp) if resp.status == 200 else None
    token = doc.get("access_token") if doc else None
    if not isinstance(token, str):
        return None, f"password login as {creds.user} failed: {resp.describe()}"
    return token, ""


def run(server: str, creds: Credentials, *, calls_required: bool = False, get: Fetch = fetch) -> list[Verdict]:
    """Every requirement's verdict for the deployment whose server name is at `server`."""
    server = server.rstrip("/")
    well_known = get("GET", server + WELL_KNOWN_CLIENT)
    verdicts = [check_well_known(well_known)]
    # Without a usable well-known, clients that are told the homeserver URL still work.
    base = homeserver_base_url(well_known) or server
    secure = urllib.parse.urlsplit(base).scheme == "https"

    token, login_problem = _login(base, creds, get)
    logged_in_by_us = token is not None and not creds.access_token
    try:
        versions = get("GET", base + VERSIONS, token=token)
        verdicts.append(check_sliding_sync_advertised(versions))
        if token is None and login_problem:
            verdicts.append(_fail("sliding-sync-request", login_problem))
        else:
            sync = get("POST", base + SLIDING_SYNC + "?timeout=0", token=token, body=SLIDING_SYNC_BODY) if token else None
            verdicts.append(check_sliding_sync_request(sync))
        metadata_path, auth_metadata = AUTH_METADATA, get("GET", base + AUTH_METADATA)
        if auth_metadata.status != 200:
            unstable = get("GET", base + AUTH_METADATA_UNSTABLE)
            if unstable.status == 200:
                metadata_path, auth_metadata = AUTH_METADATA_UNSTABLE, unstable
        verdicts.append(check_login(get("GET", base + LOGIN), auth_metadata, secure=secure,
                                    metadata_path=metadata_path))
        features = (_json_object(versions) or {}).get("unstable_features")
        rtc_endpoint = isinstance(features, dict) and features.get(RTC_FEATURE) is True
        transports = get("GET", base + RTC_TRANSPORTS, token=token) if rtc_endpoint and token else None
        verdicts.append(check_rtc_transports(well_known, versions, transports, required=calls_required))
        authed = get("GET", base + MEDIA_CONFIG, token=token) if token else None
        verdicts.append(check_media(get("GET", base + MEDIA_CONFIG), authed))
    finally:
        if logged_in_by_us:
            get("POST", base + LOGOUT, token=token, body={})
    return verdicts


# ---------------------------------------------------------------- command line


def _secret(env: str, prompt: str, environ: Mapping[str, str]) -> str | None:
    if environ.get(env):
        return environ[env]
    if not sys.stdin.isatty():
        return None
    return getpass.getpass(prompt)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m render.check_clients",
        description="Check that a Matrix deployment serves what Element X needs; one line per requirement.")
    parser.add_argument("server", help="the server name's URL, e.g. https://example.org")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--user", help=f"log in with this user's password (from ${PASSWORD_ENV}, else a prompt)")
    who.add_argument("--access-token", action="store_true",
                     help=f"use an access token (from ${TOKEN_ENV}, else a prompt)")
    parser.add_argument("--calls", action="store_true", help="fail when no RTC transport (calls) is advertised")
    parser.add_argument("--cacert", metavar="FILE",
                        help="trust the CA certificates in FILE (PEM) instead of the system's, for a private CA")
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    if not _is_url(args.server):
        parser.error(f"server: {args.server!r} is not an http(s) URL, e.g. https://example.org")

    creds = Credentials()
    if args.user:
        creds.user = args.user
        creds.password = _secret(PASSWORD_ENV, f"password for {args.user}: ", environ)
        if creds.password is None:
            parser.error(f"--user needs a password: set ${PASSWORD_ENV} or run in a terminal")
    elif args.access_token:
        creds.access_token = _secret(TOKEN_ENV, "access token: ", environ)
        if not creds.access_token:
            parser.error(f"--access-token needs a token: set ${TOKEN_ENV} or run in a terminal")

    context = None
    if args.cacert:
        try:
            context = ssl.create_default_context(cafile=args.cacert)
        except (OSError, ssl.SSLError) as err:
            parser.error(f"--cacert: {args.cacert}: {err}")
    verdicts = run(args.server, creds, calls_required=args.calls, get=functools.partial(fetch, context=context))
    for verdict in verdicts:
        print(verdict.line())
    failed = [v for v in verdicts if v.status == "FAIL"]
    skipped = [v for v in verdicts if v.status == "SKIP"]
    print(f"{len(verdicts) - len(failed) - len(skipped)} passed, {len(failed)} failed, {len(skipped)} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
