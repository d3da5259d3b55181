"""Asking a real program over HTTP: its JSON answer, and waiting for it to reach a state (a check
polled until it answers, within a bound)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], timeout: float = 60.0, every: float = 0.5) -> T:
    """The first truthy answer of `check` (an OSError counts as none: the program does not
    listen yet); AssertionError naming `what` and the last answer after `timeout` seconds."""
    end = time.monotonic() + timeout
    value: T | None = None
    while time.monotonic() < end:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {value!r})")


def get_json(url: str, timeout: float = 5.0) -> Any:
    """The JSON document `url` answers (Prometheus's and Alertmanager's APIs)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)
