"""Element Web's config.json and its Cloudflare Pages build, rendered from the typed config. Pure."""

from __future__ import annotations

import json
from typing import Any

from config import images
from config.model import StackConfig

SERVICE = "element-web"
PORT = 8080  # ELEMENT_WEB_PORT: the image runs nginx as a non-root user
CONFIG = images.config_path(images.ELEMENT_WEB)  # the web root

# Pages: the generated config.json travels as a build variable and the build writes it into the
# output directory, so the fork needs no commit per homeserver change (seed 001 edits the file).
CONFIG_ENV = "ELEMENT_CONFIG_JSON"
OUTPUT_DIR = "webapp"
YARN_VERSION = "1.22.22"


def config(cfg: StackConfig) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "default_server_config": {
            "m.homeserver": {"base_url": cfg.url("matrix"), "server_name": cfg.server_name},
        },
        "brand": cfg.element_web.brand,
        "disable_guests": True,
        "default_theme": "light",
        "room_directory": {"servers": [cfg.server_name]},
    }
    if cfg.element_call.enabled:
        # Calls go through Element Call (MatrixRTC) only; the embedded Element Call matches this
        # Element Web release, so element_call.url is left to its default.
        conf["element_call"] = {"use_exclusively": True}
        conf["features"] = {
            "feature_video_rooms": True,
            "feature_group_calls": True,
            "feature_element_call_video_rooms": True,
        }
    return conf


def config_json(cfg: StackConfig) -> str:
    return json.dumps(config(cfg), indent=2, sort_keys=True) + "\n"


def build_command() -> str:
    # printf, not echo: the JSON must land byte for byte.
    return (f"yarn install --ignore-engines && yarn build && "
            f"printf '%s' \"${CONFIG_ENV}\" > {OUTPUT_DIR}/config.json")


def build_env(cfg: StackConfig) -> dict[str, dict[str, str]]:
    """Pages build variables (plain text: nothing here is secret)."""
    web = cfg.element_web
    return {
        "NODE_VERSION": {"type": "plain_text", "value": web.node_version},
        "YARN_VERSION": {"type": "plain_text", "value": YARN_VERSION},
        CONFIG_ENV: {"type": "plain_text", "value": json.dumps(config(cfg), sort_keys=True)},
    }


def project_name(cfg: StackConfig, stack: str) -> str:
    if cfg.element_web.pages_project:
        return cfg.element_web.pages_project
    # Pages project names become <name>.pages.dev: lowercase letters, digits and dashes.
    return f"element-{cfg.server_name.replace('.', '-')}-{stack}"[:58].strip("-")
