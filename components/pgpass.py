"""libpq's password file (PGPASSFILE), the one way PostgreSQL's clients here take a password
from a file: one line per login, `host:port:database:user:password`, with ':' and '\\' escaped.

libpq ignores the file unless only its owner may read it (u=rw or less). A Kubernetes secret
volume under fsGroup is group-readable, so a client copies the file into its scratch directory
and tightens it before use (`private_copy`). Pure.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import pulumi

# Where a client keeps its private copy: its scratch directory (tmpfs / emptyDir).
PRIVATE_COPY = "/tmp/pgpass"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


def lines(logins: Sequence[tuple[str, str, str, str]], passwords: Sequence[str]) -> str:
    """One line per (host, port, database, user) login with its password ("*" matches any)."""
    return "".join(":".join(f if f == "*" else _escape(f) for f in login) + f":{_escape(password)}\n"
                   for login, password in zip(logins, passwords, strict=True))


def content(logins: Sequence[tuple[str, str, str, str]], passwords: Sequence[pulumi.Input[str]]) -> pulumi.Input[str]:
    """The file's content: plain when every password is a plain stand-in, else a secret Output."""
    if all(isinstance(p, str) for p in passwords):
        return lines(logins, [str(p) for p in passwords])
    return pulumi.Output.secret(pulumi.Output.all(*passwords).apply(lambda values: lines(logins, values)))


def private_copy(source: str, target: str = PRIVATE_COPY) -> str:
    """Shell: copy the mounted password file to `target`, created readable by its owner alone
    (a copy left by an earlier start is replaced; `cp` cannot write over a 0400 file)."""
    src, dst = shlex.quote(source), shlex.quote(target)
    return f"umask 077 && rm -f {dst} && cp {src} {dst}"
