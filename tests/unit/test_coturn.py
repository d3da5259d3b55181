"""coturn's rendered turnserver.conf against what the pinned coturn (4.17.0) reads."""

from __future__ import annotations

import stack
from components.coturn import render

# Options coturn 4.17.0 marks deprecated (src/apps/relay/mainrelay.c at 4.17.0): its defaults
# already do what they asked for (no software attribute since 4.7, no CLI since 4.10, no DTLS
# listeners without --dtls since 4.17).
DEPRECATED = ("no-software-attribute", "no-cli", "no-dtls", "no-rfc5780", "rfc3489-compatibility",
              "keep-address-family")


def _conf() -> list[str]:
    cfg = stack.parse({"server_name": "example.org", "tls": {"acme_email": "ops@example.org"},
                       "coturn": {"enabled": True, "external_ip": "192.0.2.7"}})
    return render.turnserver_conf(cfg).splitlines()


def test_no_deprecated_options() -> None:
    options = {line.split("=", 1)[0] for line in _conf() if line and not line.startswith("#")}
    assert not options & set(DEPRECATED)
    # The software attribute is off by default since 4.7.0, which is what the option asked for.
    assert "software-attribute" not in options
    # Nor the CLI (its default port 5766 on loopback) nor DTLS listeners are asked for.
    assert not options & {"cli", "cli-ip", "cli-port", "dtls"}
