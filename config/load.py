"""Reading and checking the stack config.

Every problem is collected and reported at once, each naming the key path, the bad value and
what is allowed. The error is a `pulumi.RunError`, which the Pulumi CLI prints without a Python
traceback; `python -m render` prints the same text.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import pulumi
from pydantic import BaseModel, SecretStr, ValidationError

from . import model
from .model import StackConfig

NAMESPACE = "matrix-stack"
SECRET_FIELDS = tuple(
    name for name, field in StackConfig.model_fields.items() if field.annotation == SecretStr | None
)

_PATTERN_WORDS = {
    model.HOSTNAME_RE.pattern: "a DNS hostname (lowercase letters, digits, '-' and '.')",
    model.SERVICE_NAME_RE.pattern: "a name of lowercase letters, digits and '-'",
    model.SIZE_RE.pattern: "a size such as 50M or 2G",
    model.DURATION_RE.pattern: "a duration such as 30s or 24h",
}


@dataclass(frozen=True, order=True)
class Problem:
    path: str
    message: str
    value: str = ""

    def __str__(self) -> str:
        shown = f" (got {self.value})" if self.value else ""
        return f"{NAMESPACE}:{self.path}: {self.message}{shown}"


class ConfigError(pulumi.RunError):
    """A stack config that cannot be deployed. Raised before any resource is declared."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = sorted(set(problems))
        lines = [f"the stack config has {len(self.problems)} problem(s):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


# Checks that need more than the pydantic model (the worker table, for instance) register here,
# so the config layer does not import the components.
EXTRA_CHECKS: list[Callable[[StackConfig], list[tuple[str, object, str]]]] = []


def _show(value: object, path: str) -> str:
    if path.split(".")[0] in SECRET_FIELDS:
        return "[secret]"
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The model classes a field's annotation can hold (through Optional, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found += _models_in(arg)
    return found


def _allowed_keys(loc: tuple[object, ...]) -> list[str]:
    """The keys allowed where an unknown key was found, by walking the model along `loc`."""
    current: list[type[BaseModel]] = [StackConfig]
    for part in loc[:-1]:
        nxt: list[type[BaseModel]] = []
        for cls in current:
            if isinstance(part, str) and part in cls.model_fields:
                nxt += _models_in(cls.model_fields[part].annotation)
        if nxt:
            current = nxt
            continue
        # A discriminator tag (target.docker...) narrows the union to that member.
        tagged = [c for c in current if "kind" in c.model_fields and part in typing.get_args(c.model_fields["kind"].annotation)]
        if tagged:
            current = tagged
    return sorted({key for cls in current for key in cls.model_fields})


def _path(loc: tuple[object, ...]) -> str:
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            parts[-1] = f"{parts[-1]}[{part}]" if parts else f"[{part}]"
            continue
        text = str(part)
        if i > 0 and str(loc[i - 1]) in ("target", "database") and text in (
            "docker", "kubernetes", "bundled", "external"
        ):
            continue  # the discriminator tag pydantic inserts; the user never wrote it
        parts.append(text)
    return ".".join(parts)


def _message(error: Mapping[str, typing.Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key; allowed here: " + ", ".join(_allowed_keys(tuple(error["loc"])))
    if kind == "missing":
        return "required key is missing"
    if kind == "string_pattern_mismatch":
        return "must be " + _PATTERN_WORDS.get(str(ctx.get("pattern")), f"text matching {ctx.get('pattern')}")
    if kind == "union_tag_invalid":
        return f"must be one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"needs '{ctx.get('discriminator', 'kind').strip(chr(39))}' ({ctx.get('expected_tags', 'docker or kubernetes')})"
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg[0].lower() + msg[1:] if msg else msg


def parse(raw: Mapping[str, object], secret_keys: Iterable[str] = ()) -> StackConfig:
    """Validate the namespace's raw values (key without namespace -> decoded value)."""
    problems: list[Problem] = []
    secret = set(secret_keys)
    for field in SECRET_FIELDS:
        if field in raw and field not in secret and f"{NAMESPACE}:{field}" not in secret:
            problems.append(
                Problem(field, "must be a Pulumi secret: set it with `pulumi config set --secret` or ESC", "[plaintext]")
            )
    try:
        cfg = StackConfig.model_validate(dict(raw))
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            path = _path(loc) or "(top level)"
            value = "" if error["type"] in ("missing", "extra_forbidden") else _show(error.get("input"), path)
            problems.append(Problem(path, _message(error), value))
        raise ConfigError(problems) from None
    for check in [StackConfig.problems, *EXTRA_CHECKS]:
        for key_path, bad_value, message in check(cfg):
            shown = "" if bad_value is None else _show(bad_value, key_path)
            problems.append(Problem(key_path, message, shown))
    if problems:
        raise ConfigError(problems)
    return cfg


def _decode(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text  # plain strings are stored unquoted


def raw_from_pulumi() -> tuple[dict[str, object], set[str]]:
    """All `matrix-stack:` keys of the running stack, and which of them are secret."""
    from pulumi.runtime import config as runtime_config

    prefix = NAMESPACE + ":"
    # There is no public "list every key" call: merge the two places the runtime keeps config
    # (the map the language host sets, and the PULUMI_CONFIG environment fallback).
    merged = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    secret_keys = set(runtime_config.get_config_secret_keys_env()) | set(runtime_config._SECRET_KEYS.get())
    values = {k[len(prefix):]: _decode(v) if isinstance(v, str) else v for k, v in merged.items() if k.startswith(prefix)}
    secret = {k[len(prefix):] for k in secret_keys if k.startswith(prefix)}
    return values, secret


def load() -> StackConfig:
    values, secret = raw_from_pulumi()
    return parse(values, secret)
