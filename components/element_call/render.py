"""Element Call's files and settings, rendered from the typed config. Pure functions.

Layout (seed 000): the web app on call.<server>, lk-jwt-service on jwt.<server>, the LiveKit SFU
on livekit.<server>. The proxy terminates TLS for all three; LiveKit's media ports (ICE TCP, the
UDP range, embedded TURN) are published directly, because media cannot pass an HTTP proxy.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import yaml

from components import yaml_text
from components.part import ws_url
from components.platform.targets import target_of
from config import images
from config.model import StackConfig

LIVEKIT_SERVICE = "livekit"
JWT_SERVICE = "lk-jwt-service"
WEB_SERVICE = "element-call"

LIVEKIT_PORT = 7880  # HTTP API and signalling WebSocket, behind the proxy (livekit.yaml `port`)
# lk-jwt-service listens on its default port: LIVEKIT_JWT_BIND stays unset, because the image's
# health checker builds http://localhost:<LIVEKIT_JWT_BIND>/healthz and ":8080" would break it.
JWT_PORT = images.facts_for(images.LK_JWT_SERVICE).port or 8080
WEB_PORT = images.facts_for(images.ELEMENT_CALL).port or 8080  # nginx-unprivileged
# How often lk-jwt-service checks that a participant it holds a delegated leave for is still on
# the SFU: the fallback when LiveKit's webhook about a disconnect is lost (its README,
# "LiveKit SFU Wiring"). Unset, the check is off.
SANITY_CHECK_INTERVAL_S = 30

# LiveKit's Prometheus endpoint (livekit.yaml `prometheus.port`; the top-level `prometheus_port`
# is deprecated in v1.13.5, pkg/service/server.go): a listener of its own, apart from the API and
# signalling port the proxy forwards, so only the stack's scraper dials it (MetricsTarget).
LIVEKIT_METRICS_PORT = 6789
LIVEKIT_METRICS_JOB = "livekit"

LIVEKIT_CONFIG = "/etc/livekit/livekit.yaml"
# LiveKit reads `key: secret` pairs from key_file, so livekit.yaml itself holds no secret.
# LiveKit refuses a key file that others may read: mode 0400.
LIVEKIT_KEYS = "/secrets/livekit-keys.yaml"
# lk-jwt-service's copy of the API secret: it reads the file LIVEKIT_SECRET_FROM_FILE names
# (config/images.py).
JWT_SECRET_FILE = "/secrets/livekit-secret"
# The name of LiveKit's one API key. It is no secret (every token a client holds carries it as
# its `iss` claim); only the key's secret is. A fixed name keeps livekit.yaml a function of the
# config alone, and the webhook section must name the key it signs with.
LIVEKIT_API_KEY = "lk-jwt-service"
# lk-jwt-service learns of SFU disconnects here, to send a vanished member's delayed leave event
# (its README, "LiveKit SFU Wiring"); without it, participants whose client died stay in the call.
JWT_WEBHOOK_PATH = "/sfu_webhook"
WEB_CONFIG = images.config_path(images.ELEMENT_CALL)  # the web root

# Embedded TURN: off coturn's 3478/5349 and relay range so both can run on one host
# (matrix-docker-ansible-deploy's choice). The relay range stays small: Docker publishes each
# port of a range separately.
TURN_UDP_PORT = 3479
TURN_RELAY_START = 30000
TURN_RELAY_END = 30020


def jwt_url(cfg: StackConfig) -> str:
    """lk-jwt-service's base URL: what clients get as livekit_service_url."""
    return cfg.url("jwt")


def livekit_url(cfg: StackConfig) -> str:
    """The SFU's signalling WebSocket URL, handed to clients by lk-jwt-service."""
    return ws_url(cfg.url("livekit"))


def webhook_target(cfg: StackConfig) -> tuple[str, int, bool]:
    """(host, port, crosses_hosts) LiveKit dials to deliver its webhook to lk-jwt-service."""
    return target_of(cfg).reach(LIVEKIT_SERVICE, JWT_SERVICE, JWT_PORT)


def webhook_url(cfg: StackConfig) -> str:
    # The private address, not the public jwt. site: LiveKit and lk-jwt-service share a network
    # (or a published port across hosts), and the webhook needs no trip through the proxy.
    host, port, _crosses = webhook_target(cfg)
    return f"http://{host}:{port}{JWT_WEBHOOK_PATH}"


def livekit_config(cfg: StackConfig) -> dict[str, Any]:
    lk = cfg.element_call.livekit
    rtc: dict[str, Any] = {
        "tcp_port": lk.rtc_tcp_port,
        "port_range_start": lk.rtc_udp_port_start,
        "port_range_end": lk.rtc_udp_port_end,
    }
    if lk.external_ip:
        rtc["node_ip"] = lk.external_ip
        rtc["use_external_ip"] = False
    elif cfg.local:
        # A browser on this machine reaches the published ports on loopback; STUN would
        # advertise the machine's public address instead.
        rtc["node_ip"] = "127.0.0.1"
        rtc["use_external_ip"] = False
    else:
        rtc["use_external_ip"] = True
    conf: dict[str, Any] = {
        "port": LIVEKIT_PORT,
        "bind_addresses": ["0.0.0.0"],
        "rtc": rtc,
        # Only lk-jwt-service may create rooms, and only for LIVEKIT_FULL_ACCESS_HOMESERVERS;
        # with auto_create anyone holding a token for any room name would open one.
        "room": {"auto_create": False},
        "key_file": LIVEKIT_KEYS,
        # Signed with the key's secret; lk-jwt-service verifies it with the same pair.
        "webhook": {"api_key": LIVEKIT_API_KEY, "urls": [webhook_url(cfg)]},
        "logging": {"level": "info"},
        # Served at every path of its own port, on the same bind_addresses as the API.
        "prometheus": {"port": LIVEKIT_METRICS_PORT},
    }
    if lk.turn:
        conf["turn"] = {
            "enabled": True,
            # The TURN domain must resolve to the SFU's real address: the livekit record is
            # DNS-only for that reason.
            "domain": cfg.host("livekit"),
            "udp_port": TURN_UDP_PORT,
            # No TURN/TLS: the stack delivers no certificate to LiveKit (the proxy holds it).
            "tls_port": 0,
            "relay_range_start": TURN_RELAY_START,
            "relay_range_end": TURN_RELAY_END,
        }
    return conf


def livekit_yaml(cfg: StackConfig) -> str:
    return yaml_text.dump(livekit_config(cfg), sort_keys=False, default_flow_style=False)


def livekit_keys(secret: str) -> str:
    return yaml.safe_dump({LIVEKIT_API_KEY: secret}, default_flow_style=False)


def jwt_env(cfg: StackConfig) -> dict[str, pulumi.Input[str]]:
    """lk-jwt-service's environment: plain values and the path of its secret's file."""
    return {
        "LIVEKIT_URL": livekit_url(cfg),
        "LIVEKIT_KEY": LIVEKIT_API_KEY,
        "LIVEKIT_SECRET_FROM_FILE": JWT_SECRET_FILE,
        # Only our own users may create SFU rooms; others may join rooms that exist.
        "LIVEKIT_FULL_ACCESS_HOMESERVERS": cfg.server_name,
        "LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS": str(SANITY_CHECK_INTERVAL_S),
    }


def web_config(cfg: StackConfig) -> dict[str, Any]:
    """The Element Call web app's config.json."""
    return {
        "default_server_config": {
            "m.homeserver": {"base_url": cfg.url("matrix"), "server_name": cfg.server_name},
        },
        # A fallback only: Element Call >= 0.24 asks the homeserver's transports API first.
        "livekit": {"livekit_service_url": jwt_url(cfg)},
    }


def web_config_json(cfg: StackConfig) -> str:
    return json.dumps(web_config(cfg), indent=2, sort_keys=True) + "\n"


def transports(cfg: StackConfig) -> list[dict[str, str]]:
    """The RTC transports clients are told about: lk-jwt-service's URL, which clients ask for
    LiveKit tokens themselves (the standalone mode the pinned lk-jwt-service 0.6.0 serves).

    Synapse >= 1.161 calls `livekit_service_url` deprecated in favour of `url`, but `url` is the
    SFU's WebSocket URL of MSC4195, whose clients get tokens from the homeserver
    (/_matrix/client/unstable/io.element.msc4195/rtc/livekit/*), which Synapse proxies to an
    lk-jwt-service registered as an application service (MSC4512): lk-jwt-service >= 0.7, not
    pinned here (config/images.py). Publishing `url` without that service would send Element X
    to an endpoint that answers 404, so the deprecated key stays until that pin moves."""
    return [{"type": "livekit", "livekit_service_url": jwt_url(cfg)}]


def homeserver(cfg: StackConfig) -> dict[str, Any]:
    """Synapse keys for MatrixRTC on the pinned Synapse (1.163): element-call-and-ntfy.md, 2."""
    keys: dict[str, Any] = {
        "experimental_features": {
            "msc4222_enabled": True,  # state_after in sync: Element Call tracks room state with it
            "msc4143_enabled": True,  # the RTC transports API Element Call >= 0.24 discovers through
        },
        "matrix_rtc": {"transports": transports(cfg)},
        # Delayed events (MSC4140) end calls whose client vanished; unset means "stuck calls".
        "max_event_delay_duration": "24h",
        # A call restarts its delayed leave event every few seconds.
        "rc_delayed_event_mgmt": {"per_second": 1, "burst_count": 20},
    }
    if cfg.synapse.rate_limits.message is None:
        # Absorbs the bursts of to-device key sharing when a call starts; an explicit
        # synapse.rate_limits.message wins.
        keys["rc_message"] = {"per_second": 0.5, "burst_count": 30}
    return keys


def well_known_client(cfg: StackConfig) -> dict[str, object]:
    """Still published: Element Web's bundled Element Call widget cannot call the transports API."""
    return {"org.matrix.msc4143.rtc_foci": transports(cfg)}
