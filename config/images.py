"""Pinned container images: the defaults every stack starts from.

Synapse's tag must equal the matrix-synapse version the tests install from PyPI
(requirements/test.in), because the tests boot the files we render with that version.
"""

SYNAPSE_VERSION = "1.163.2"

SYNAPSE = f"matrixdotorg/synapse:v{SYNAPSE_VERSION}"
POSTGRES = "postgres:16.10-alpine"
REDIS = "redis:7.4.6-alpine"
NGINX = "nginx:1.29.1-alpine"
ELEMENT_CALL = "ghcr.io/element-hq/element-call:v0.24.0"
LK_JWT_SERVICE = "ghcr.io/element-hq/lk-jwt-service:0.6.0"
LIVEKIT = "livekit/livekit-server:v1.13.5"
NTFY = "binwiederhier/ntfy:v2.14.0"
ELEMENT_WEB = "vectorim/element-web:v1.12.26"
COTURN = "coturn/coturn:4.7.0"
CERTBOT = "certbot/certbot:v4.1.1"
