"""Reading and checking the stack config.

Every problem is collected and reported at once, each naming the key path, the bad value and
what is allowed. A value that does not validate is replaced by its default so the rest can be
judged, and the rules over the validated config (config/checks.py) each run unless a key they
read is itself invalid: one bad section never hides another section's problems. The rules are the
config's own (config/rules.py), then those the caller hands in: the stack-wide rules that need
the parts come from the layer above (stack.parse, stack.load), never imported from here.

The error is a `pulumi.RunError`, which the Pulumi CLI prints without a Python traceback;
`python -m render` prints the same text.
"""

from __future__ import annotations

import copy
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pulumi
from pydantic import BaseModel, SecretStr, ValidationError

from .checks import Check, touches
from .model import (
    BUCKET_RE,
    DURATION_RE,
    EMAIL_RE,
    HOST_KEY_RE,
    HOSTNAME_RE,
    NTFY_TOPIC_RE,
    REPOSITORY_PATH_RE,
    S3_ENDPOINT_RE,
    SERVICE_NAME_RE,
    SFTP_PATH_RE,
    SIZE_RE,
    UNIX_USER_RE,
    Database,
    Repository,
    StackConfig,
    Target,
)
from .rules import RULES

NAMESPACE = "matrix-stack"
SECRET_FIELDS = tuple(
    name for name, field in StackConfig.model_fields.items()
    if field.annotation in (SecretStr | None, dict[str, SecretStr] | None)
)

_PATTERN_WORDS = {
    HOSTNAME_RE.pattern: "a DNS hostname (lowercase letters, digits, '-' and '.')",
    SERVICE_NAME_RE.pattern: "a name of lowercase letters, digits and '-'",
    SIZE_RE.pattern: "a size such as 50M or 2G",
    DURATION_RE.pattern: "a duration such as 30s or 24h",
    S3_ENDPOINT_RE.pattern: "a URL of scheme and host only, such as https://s3.example.com",
    BUCKET_RE.pattern: "a bucket name of 3 to 63 lowercase letters, digits, '.' and '-'",
    REPOSITORY_PATH_RE.pattern: "a path of letters, digits, '.', '_', '-' and '/'",
    SFTP_PATH_RE.pattern: "an absolute path of letters, digits, '.', '_', '-' and '/'",
    UNIX_USER_RE.pattern: "a user name of lowercase letters, digits, '_', '.' and '-'",
    NTFY_TOPIC_RE.pattern: "an ntfy topic of 1 to 64 letters, digits, '_' and '-'",
    EMAIL_RE.pattern: "an email address such as ops@example.org",
    HOST_KEY_RE.pattern: "one public host key, '<type> <base64>' (ssh-keyscan's line without the host)",
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


def _mask_secrets(value: object) -> object:
    """A value with every secret field's content replaced, at any depth."""
    if isinstance(value, Mapping):
        return {k: "[secret]" if k in SECRET_FIELDS else _mask_secrets(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask_secrets(v) for v in value]
    if isinstance(value, SecretStr):
        return "[secret]"
    return value


def _show(value: object, path: str) -> str:
    if path.split(".")[0].split("[")[0] in SECRET_FIELDS:
        return "[secret]"
    value = _mask_secrets(value)
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
    elif origin in (list, tuple):
        for arg in typing.get_args(annotation):
            found += _models_in(arg)
    elif origin is dict:
        args = typing.get_args(annotation)
        if len(args) == 2:
            found += _models_in(args[1])
    return found


def _models_at(loc: tuple[object, ...]) -> list[type[BaseModel]]:
    """The model classes the value at `loc` can be, by walking the model from the top."""
    current: list[type[BaseModel]] = [StackConfig]
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: the element's models are already current
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
            continue
        return []
    return current


def _allowed_keys(loc: tuple[object, ...]) -> list[str]:
    """The keys allowed where an unknown key was found."""
    return sorted({key for cls in _models_at(loc[:-1]) for key in cls.model_fields})


def _kinds(loc: tuple[object, ...]) -> str:
    """The `kind` tags a discriminated union at `loc` accepts, as 'a', 'b'."""
    tags = [tag for cls in _models_at(loc) if "kind" in cls.model_fields
            for tag in typing.get_args(cls.model_fields["kind"].annotation)]
    return ", ".join(f"'{t}'" for t in tags)


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_*@:/-]+$")


def _quoted(path: str) -> str:
    """A check's key path with each segment that is not a plain name (a user's map key such as
    '' or ' ') quoted, so the path stays readable and one line."""
    if all(_PLAIN_KEY.match(part) or _INDEXED.match(part) for part in path.split(".")):
        return path
    return ".".join(part if (_PLAIN_KEY.match(part) or _INDEXED.match(part)) else json.dumps(part)
                    for part in path.split("."))


_INDEXED = re.compile(r"^[A-Za-z0-9_-]+(\[[0-9]+\])+$")


def _tags(union: object) -> tuple[str, ...]:
    """The `kind` tags of a discriminated union of models (Annotated[A | B, Field(discriminator)])."""
    members = typing.get_args(typing.get_args(union)[0])
    return tuple(tag for member in members for tag in typing.get_args(member.model_fields["kind"].annotation))


# Discriminated unions: the field holding one, and the tags pydantic inserts into an error's
# location below it (the user never wrote them). Read from the unions, so a new member (a target,
# say) is known here without a word.
_TAGGED = {
    "target": _tags(Target),
    "database": _tags(Database),
    "repository": _tags(Repository),
}


def _path(loc: tuple[object, ...]) -> str:
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            parts[-1] = f"{parts[-1]}[{part}]" if parts else f"[{part}]"
            continue
        text = str(part)
        if i > 0 and str(loc[i - 1]) in _TAGGED and text in _TAGGED[str(loc[i - 1])]:
            continue  # the discriminator tag pydantic inserts; the user never wrote it
        # A key that is not a plain name (empty, spaces, control characters) is shown quoted.
        parts.append(text if _PLAIN_KEY.match(text) else json.dumps(text))
    return ".".join(parts)


# pydantic's wording for the common type and bound errors, said as what is allowed.
_PLAIN = {
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "greater_than": "must be greater than {gt}",
    "less_than": "must be less than {lt}",
    "literal_error": "must be one of {expected}",
    "string_type": "must be text",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a mapping of keys to values",
    "model_attributes_type": "must be a mapping of keys to values",
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
    "string_too_long": "must be at most {max_length} characters",
    "string_too_short": "must be at least {min_length} characters",
}


def _join(base: str, field: str) -> str:
    if not base:
        return field
    return base + field if field.startswith("[") else f"{base}.{field}"


def _message(error: Mapping[str, typing.Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key; allowed here: " + ", ".join(_allowed_keys(tuple(error["loc"])))
    if kind == "missing":
        return "required key is missing"
    if kind == "string_pattern_mismatch":
        return "must be " + _PATTERN_WORDS.get(str(ctx.get("pattern")), f"text matching {ctx.get('pattern')}")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        loc = tuple(error["loc"])
        return f"must be one of {_kinds(loc) or ctx.get('expected_tags')}"
    if kind in _PLAIN:
        return _PLAIN[kind].format(**ctx)
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg[0].lower() + msg[1:] if msg else msg


Key = tuple[str, ...]  # a key path; a list counts as one value (paths stop at an index)


def _key(path: str) -> Key:
    """A reported key path ('target.hosts[0].services') as a Key (target, hosts)."""
    parts: list[str] = []
    for part in path.split("."):
        if "[" in part:
            parts.append(part.split("[", 1)[0])
            break
        parts.append(part)
    return tuple(p for p in parts if p)


def _user_loc(loc: tuple[object, ...]) -> tuple[object, ...]:
    """pydantic's error location without the discriminator tags it inserts."""
    return tuple(part for i, part in enumerate(loc)
                 if not (i > 0 and str(loc[i - 1]) in _TAGGED and part in _TAGGED[str(loc[i - 1])]))


def _cut(loc: tuple[object, ...]) -> Key:
    """The location up to its first list index: a list is judged, and replaced, as a whole."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            break
        parts.append(str(part))
    return tuple(parts)


def _overlap(a: Key, b: Key) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


@dataclass(frozen=True)
class _Refusal:
    problem: Problem
    drop: tuple[Key, ...]  # what the repair removes so that defaults apply (the first is blamed)
    invalid: tuple[Key, ...]  # what no rule may read afterwards


def _refusal(error: Mapping[str, typing.Any]) -> _Refusal:
    loc = tuple(error["loc"])
    user = _user_loc(loc)
    path = _path(loc) or "(top level)"
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind == "field_rule":
        # A rule of one block blamed on one of its fields (model.rule).
        path = _join(_path(loc), str(ctx["field"]))
        shown = ctx.get("value")
        value = "" if shown is None else _show(shown, path)
        blamed = _cut(user) + _key(str(ctx["field"]))
        reads = tuple(_cut(user) + _key(r) for r in ctx.get("reads") or ()) or (blamed,)
        return _Refusal(Problem(path, _message(error), value), (blamed, *reads), reads)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        path = _join(_path(loc), "kind")
        value = _show(ctx["tag"], path) if "tag" in ctx else ""
        return _Refusal(Problem(path, _message(error), value), (_cut(user),), (_cut(user),))
    problem = Problem(path, _message(error), "" if kind in ("missing", "extra_forbidden") else _show(error.get("input"), path))
    if kind == "extra_forbidden":
        # A misspelt key meant to set one of its siblings: its whole block is in doubt.
        block = _cut(user[:-1]) or _cut(user)
        return _Refusal(problem, (_cut(user),), (block,))
    if kind == "missing":
        block = _cut(user[:-1]) or _cut(user)  # the block cannot stand without it
        return _Refusal(problem, (block,), (block,))
    return _Refusal(problem, (_cut(user),), (_cut(user),))


def _remove_exact(root: dict[str, typing.Any], key: Key) -> bool:
    parent: typing.Any = root
    for part in key[:-1]:
        parent = parent.get(part) if isinstance(parent, dict) else None
    if key and isinstance(parent, dict) and key[-1] in parent:
        del parent[key[-1]]
        return True
    return False


def _remove(root: dict[str, typing.Any], keys: tuple[Key, ...]) -> list[Key]:
    """Remove the values at `keys`; if none is there, the nearest value enclosing the first.
    Returns what was removed."""
    removed = [key for key in keys if _remove_exact(root, key)]
    key = keys[0] if keys and not removed else ()
    while key and not removed:
        key = key[:-1]
        if _remove_exact(root, key):
            removed.append(key)
    return removed


# Stand-ins for required top-level keys, so the other sections can still be judged; no rule
# that reads them runs.
_STAND_INS = {"server_name": "matrix.invalid"}
_MAX_PASSES = 200


def _validate(raw: Mapping[str, object]) -> tuple[StackConfig | None, list[Problem], set[Key]]:
    """Validate in one pass, then repair: each refused value is replaced by its default and the
    rest validated again, until the config stands. Rules of a block (model.rule) that could not
    run while one of its fields was refused run then; they are reported unless they read a
    value the repair replaced. Returns the repaired config (None if nothing could stand), every
    problem, and the key paths that did not validate."""
    current = copy.deepcopy(dict(raw))
    problems: list[Problem] = []
    invalid: set[Key] = set()
    for first in [True] + [False] * _MAX_PASSES:
        try:
            return StackConfig.model_validate(current), problems, invalid
        except ValidationError as exc:
            found = [_refusal(error) for error in exc.errors()]
        changed = False
        removed: list[Key] = []
        for refusal in found:
            if first or not any(_overlap(a, b) for a in refusal.invalid for b in invalid):
                problems.append(refusal.problem)
            gone = _remove(current, refusal.drop)
            removed += gone
            blamed = refusal.drop[0]
            if gone:
                changed = True
            elif len(blamed) == 1 and blamed[0] in _STAND_INS and blamed[0] not in current:
                current[blamed[0]] = _STAND_INS[blamed[0]]
                changed = True
        # What was removed is invalid too: a rule reading it would judge a default.
        for refusal in found:
            invalid.update(refusal.invalid)
        invalid.update(removed)
        if not changed:
            break
    return None, problems, invalid


def parse(raw: Mapping[str, object], secret_keys: Iterable[str] = (), *, rules: Sequence[Check] = ()) -> StackConfig:
    """Validate the namespace's raw values (key without namespace -> decoded value).

    Every problem is reported at once: schema errors, then the config's own rules (config/rules.py)
    and after them `rules` (the stack-wide ones, from stack.parse), each of which runs unless a key
    it reads is itself invalid."""
    problems: list[Problem] = []
    secret = set(secret_keys)
    for field in SECRET_FIELDS:
        if field in raw and field not in secret and f"{NAMESPACE}:{field}" not in secret:
            problems.append(
                Problem(field, "must be a Pulumi secret: set it with `pulumi config set --secret` or ESC", "[plaintext]")
            )
    cfg, refused, invalid = _validate(raw)
    problems += refused
    if cfg is not None:
        for rule in (*RULES, *rules):
            if any(touches(read, key) for read in rule.reads for key in invalid):
                continue
            findings = rule.run(cfg)
            for key_path, bad_value, message in findings:
                shown = "" if bad_value is None else _show(bad_value, key_path)
                problems.append(Problem(_quoted(key_path), message, shown))
            # A value a rule refused is not used by the rules after it.
            invalid.update(_key(key_path) for key_path, _value, _message in findings)
    if problems or cfg is None:
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


def load(*, rules: Sequence[Check] = ()) -> StackConfig:
    """The running stack's config, judged by the config's own rules and then `rules`."""
    values, secret = raw_from_pulumi()
    return parse(values, secret, rules=rules)
