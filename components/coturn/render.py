"""coturn's turnserver.conf and the Synapse TURN keys, rendered from the typed config. Pure.

coturn is only for legacy 1:1 VoIP (and Jitsi): MatrixRTC calls use LiveKit, which ignores
Synapse's turn_uris. coturn has no *_file option for its shared secret, so the secret lives in a
separate one-line secret file and the container concatenates the two at start: the readable
turnserver.conf stays free of secrets.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from components.part import HOMESERVER_SECRETS_DIR
from config import images
from config.model import StackConfig

SERVICE = "coturn"
CONFIG = images.config_path(images.COTURN)
AUTH_CONFIG = "/secrets/turn-auth.conf"
RUNTIME_CONFIG = "/tmp/turnserver.conf"
PORT = 3478
# coturn's Prometheus exporter (--prometheus, its default port 9641, path /metrics): the pinned
# image builds it (config/images.py, COTURN), Debian's coturn 4.6.1 does not.
METRICS_PORT = 9641
METRICS_PATH = "/metrics"
METRICS_JOB = "coturn"
# Where Synapse reads the shared secret it signs TURN credentials with.
SYNAPSE_SECRET_PATH = f"{HOMESERVER_SECRETS_DIR}/turn_shared_secret"

# Peers a relay may never reach (CVE-2020-26262): private, loopback, link-local, CGNAT and
# documentation ranges. This also denies Docker bridges (172.16.0.0/12), which is the point:
# a TURN client must not be able to reach the stack's private network.
DENIED_PEERS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4", "::1/128", "::ffff:0:0/96", "64:ff9b::/96",
    "100::/64", "2001::/32", "2001:db8::/32", "fc00::/7", "fe80::/10",
)


def external_ip(cfg: StackConfig) -> str | None:
    """The relay address coturn advertises: explicit, else the address DNS points at."""
    return cfg.coturn.external_ip or (cfg.cloudflare.origin_ip if cfg.cloudflare.enabled else None)


def _range(cidr: str) -> str:
    # coturn takes address ranges as first-last.
    net = ipaddress.ip_network(cidr)
    return f"{net.network_address}-{net.broadcast_address}"


def turnserver_conf(cfg: StackConfig) -> str:
    turn = cfg.coturn
    host = cfg.host("turn")
    lines = [
        "# Rendered by matrix-stack; the shared secret is appended from a secret file at start.",
        f"listening-port={PORT}",
        # No TURN over TLS (5349): the stack delivers no certificate to coturn yet. DTLS and the
        # CLI are off by default in the pinned coturn (4.17.0 starts DTLS listeners only with
        # --dtls, the CLI only with --cli; no-dtls and no-cli are deprecated there).
        "no-tls",
        "fingerprint",
        # Time-limited credentials derived from the secret Synapse shares (turn_shared_secret).
        "use-auth-secret",
        f"realm={host}",
        f"server-name={host}",
        f"min-port={turn.relay_port_start}",
        f"max-port={turn.relay_port_end}",
    ]
    ip = external_ip(cfg)
    if ip:
        lines.append(f"external-ip={ip}")
    lines += [
        "no-tcp-relay",
        "no-multicast-peers",
        # No software attribute: coturn >= 4.7 leaves it out by default (no-software-attribute is
        # deprecated there).
        # simple-log (no rollover) is a no-op with stdout (coturn 4.17.0 ChangeLog, #2028).
        "log-file=stdout",
        "pidfile=/tmp/turnserver.pid",
        "total-quota=100",
        "bps-capacity=0",
        "stale-nonce=600",
        # Allocation and traffic counters for the stack's Prometheus, on a port of their own.
        "prometheus",
        f"prometheus-port={METRICS_PORT}",
    ]
    lines += [f"denied-peer-ip={_range(cidr)}" for cidr in DENIED_PEERS]
    return "\n".join(lines) + "\n"


def auth_conf(secret: str) -> str:
    return f"static-auth-secret={secret}\n"


def command() -> tuple[str, ...]:
    return ("sh", "-c", f"cat {CONFIG} {AUTH_CONFIG} > {RUNTIME_CONFIG} && exec turnserver -c {RUNTIME_CONFIG}")


def turn_uris(cfg: StackConfig) -> list[str]:
    host = cfg.host("turn")
    return [f"turn:{host}:{PORT}?transport=udp", f"turn:{host}:{PORT}?transport=tcp"]


def homeserver(cfg: StackConfig) -> dict[str, Any]:
    return {
        "turn_uris": turn_uris(cfg),
        "turn_shared_secret_path": SYNAPSE_SECRET_PATH,
        "turn_user_lifetime": "1h",
        "turn_allow_guests": False,
    }


def check(cfg: StackConfig) -> list[tuple[str, object, str]]:
    if not (cfg.coturn.enabled and cfg.element_call.enabled):
        return []
    turn, lk = cfg.coturn, cfg.element_call.livekit
    if turn.relay_port_end < lk.rtc_udp_port_start or turn.relay_port_start > lk.rtc_udp_port_end:
        return []
    return [("coturn.relay_port_start", turn.relay_port_start,
             f"the relay range must not overlap element_call.livekit's RTC UDP range "
             f"({lk.rtc_udp_port_start}-{lk.rtc_udp_port_end})")]
