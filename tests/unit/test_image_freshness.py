"""Every pin's facts are at least as new as the pin: each records the tag it was read for and the
day it was read, and neither may fall behind the pin (config/images.py). A bump that leaves the
facts as they were, by hand or by Renovate, fails here until someone re-reads them."""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from config import images
from tests.conftest import ROOT

IMAGES_PY = Path("config/images.py")
BY_IMAGE = {facts.image: facts for facts in images.IMAGE_FACTS}


def tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


@pytest.mark.parametrize("image", sorted(BY_IMAGE))
def test_facts_were_read_for_the_pinned_tag(image: str) -> None:
    facts = BY_IMAGE[image]
    assert facts.read_for == tag(image), (
        f"{image} is pinned, but its facts were read for {facts.read_for}: re-read them at {tag(image)} "
        "(each Source, then read_for and read_on)")
    read_on = datetime.date.fromisoformat(facts.read_on)
    assert read_on <= datetime.date.today(), f"{image}: read_on {facts.read_on} is in the future"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def pinned_since(needle: str) -> datetime.date:
    """The day `needle` (a pin's tag) last entered config/images.py: today when the change is not
    committed yet, else the newest commit that changed how often the file holds it."""
    now = (ROOT / IMAGES_PY).read_text()
    head = subprocess.run(["git", "show", f"HEAD:{IMAGES_PY}"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0 or now.count(needle) != head.stdout.count(needle):
        return datetime.date.today()
    dates = _git("log", "--format=%cs", "-S", needle, "--", str(IMAGES_PY)).split()
    assert dates, f"no commit introduced {needle!r} into {IMAGES_PY}"
    return datetime.date.fromisoformat(dates[0])


def _needle(image: str) -> str:
    """The line that pins `image`: NAME = "image", or, for SYNAPSE and MAS, whose version is a
    constant of its own, NAME_VERSION = "version"."""
    lines = (ROOT / IMAGES_PY).read_text().splitlines()
    version = tag(image).removeprefix("v")
    plain = re.compile(r'[A-Z][A-Z_]* = "' + re.escape(image) + '"')
    versioned = re.compile(r'[A-Z][A-Z_]*_VERSION = "' + re.escape(version) + '"')
    found = [line for line in lines if plain.fullmatch(line) or versioned.fullmatch(line)]
    assert len(found) == 1, f"{image}: {len(found)} lines pin it in {IMAGES_PY}"
    return found[0]


@pytest.fixture(scope="module")
def git_history() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("the freshness of the facts is judged from git history: run the tests in a git checkout")


@pytest.mark.parametrize("image", sorted(BY_IMAGE))
def test_no_pin_is_newer_than_its_facts(git_history: None, image: str) -> None:
    facts = BY_IMAGE[image]
    needle = _needle(image)
    since = pinned_since(needle)
    assert datetime.date.fromisoformat(facts.read_on) >= since, (
        f"{image} was pinned on {since}, but its facts were read on {facts.read_on}: re-read them")
