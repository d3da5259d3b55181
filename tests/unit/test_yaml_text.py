"""Config files' YAML is emitted once per distinct document: a document that differs in any
value's type, in key order or in the emitter's options is never answered with another's text."""

from __future__ import annotations

import yaml

from components import yaml_text


def test_each_document_gets_its_own_text() -> None:
    documents = [{"a": 1}, {"a": "1"}, {"a": True}, {"a": 1.0}, {"a": None}, {"a": [1]}, {"a": (1,)},
                 {"a": 1, "b": 2}, {"b": 2, "a": 1}]
    for data in documents:
        for options in ({"sort_keys": False}, {"sort_keys": True}, {"sort_keys": False, "width": 1000}):
            assert yaml_text.dump(data, **options) == yaml.safe_dump(data, **options), (data, options)
    # Asked again, the same texts (now looked up).
    assert [yaml_text.dump(d, sort_keys=False) for d in documents] == \
        [yaml.safe_dump(d, sort_keys=False) for d in documents]
