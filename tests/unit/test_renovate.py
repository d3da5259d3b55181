"""Renovate sees every pin: its custom regex managers (renovate.json), evaluated here as Renovate
evaluates them, find each pinned image of config/images.py with the pinned tag, and nothing else.
A pin written so the managers cannot see it would never announce its updates; it fails here.
(scripts/test validates renovate.json itself with Renovate's own renovate-config-validator.)"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest

from config import images
from tests.conftest import ROOT

CONFIG = json.loads((ROOT / "renovate.json").read_text())


@dataclass(frozen=True)
class Found:
    file: str
    dep_name: str
    current_value: str
    datasource: str
    extract_version: str | None


def python_regex(js: str) -> re.Pattern[str]:
    """A Renovate (JavaScript) regex in Python's dialect: named groups are (?P<name>...)."""
    return re.compile(re.sub(r"\(\?<(?=[A-Za-z])", "(?P<", js))


def _file_pattern(pattern: str) -> re.Pattern[str]:
    assert pattern.startswith("/") and pattern.endswith("/"), f"{pattern}: only /regex/ file patterns here"
    return python_regex(pattern[1:-1])


def _template(manager: dict[str, Any], key: str, groups: dict[str, str | None]) -> str | None:
    value = manager.get(f"{key}Template")
    return value if value is not None else groups.get(key)


def found_in(path: str) -> list[Found]:
    """Every dependency the custom regex managers extract from `path` (matchStringsStrategy any)."""
    text = (ROOT / path).read_text()
    found = []
    for manager in CONFIG.get("customManagers", []):
        if manager.get("customType") != "regex":
            continue
        if not any(_file_pattern(p).search(path) for p in manager["managerFilePatterns"]):
            continue
        for js in manager["matchStrings"]:
            for match in python_regex(js).finditer(text):
                groups = match.groupdict()
                dep, value, source = (_template(manager, k, groups) for k in ("depName", "currentValue", "datasource"))
                assert dep and value and source, f"{path}: a match without depName, currentValue or datasource"
                found.append(Found(path, dep, value, source, _template(manager, "extractVersion", groups)))
    return found


def tag_of(found: Found, tag: str) -> str | None:
    """The version Renovate compares with `found.current_value` for an image tag."""
    if found.extract_version is None:
        return tag
    match = python_regex(found.extract_version).fullmatch(tag)
    return match.group("version") if match else None


PINS = {facts.image for facts in images.IMAGE_FACTS}


@pytest.mark.parametrize("image", sorted(PINS))
def test_every_pin_is_found_with_its_tag_and_a_datasource(image: str) -> None:
    repository, tag = images.repository(image), image.rsplit(":", 1)[1]
    found = [f for f in found_in("config/images.py") if f.dep_name == repository]
    assert len(found) == 1, f"{image}: Renovate's managers find it {len(found)} times in config/images.py"
    assert found[0].datasource == "docker"
    assert found[0].current_value == tag_of(found[0], tag), f"{image}: Renovate reads {found[0].current_value}"


def test_the_managers_find_nothing_but_pins() -> None:
    pinned = {images.repository(p) for p in PINS}
    assert {f.dep_name for f in found_in("config/images.py")} == pinned


def test_the_synapse_the_tests_boot_moves_with_the_synapse_image() -> None:
    # The same dependency in both files, so the same branch and PR.
    [image] = [f for f in found_in("config/images.py") if f.dep_name == "matrixdotorg/synapse"]
    [tests] = found_in("requirements/test.in")
    assert (tests.dep_name, tests.datasource, tests.current_value) == (image.dep_name, "docker", images.SYNAPSE_VERSION)
    assert tests.extract_version == image.extract_version


def test_a_pin_the_managers_cannot_read_is_caught() -> None:
    # A pin written another way (a single-quoted string) escapes the managers.
    text = (ROOT / "config/images.py").read_text().replace(f'"{images.NGINX}"', f"'{images.NGINX}'")
    managers = [m for m in CONFIG["customManagers"] if any(_file_pattern(p).search("config/images.py")
                                                           for p in m["managerFilePatterns"])]
    names = {m.groupdict()["depName"] for mgr in managers for js in mgr["matchStrings"]
             for m in python_regex(js).finditer(text)}
    assert "nginx" not in names and "postgres" in names
