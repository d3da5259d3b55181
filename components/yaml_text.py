"""YAML text of the config files the parts render, each distinct document emitted once.

The placement check and the build call the same pure services(), so every file is rendered
twice per run. A document is looked up by repr(), which is exact for the plain values YAML can
hold (1, '1', True and 1.0 differ, and so does key order) and cheap beside the emitter.

PyYAML's pure-Python emitter, not libyaml's: libyaml refuses strings Python's accepts (a lone
surrogate raises UnicodeEncodeError), and a config value must fail as a config error or render.
"""

from __future__ import annotations

from typing import Any

import yaml

_TEXTS: dict[tuple[str, tuple[tuple[str, Any], ...]], str] = {}
_MAX = 512


def dump(data: Any, **options: Any) -> str:
    """yaml.safe_dump(data, **options)."""
    key = (repr(data), tuple(sorted(options.items())))
    text = _TEXTS.get(key)
    if text is None:
        text = yaml.safe_dump(data, **options)
        if len(_TEXTS) >= _MAX:
            _TEXTS.clear()
        _TEXTS[key] = text
    return text
