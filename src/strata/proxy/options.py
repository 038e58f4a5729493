"""The startup packet's ``options`` value, as PostgreSQL reads it.

What it is: `split_options` / `join_options` (PostgreSQL's pg_split_opts
rules: whitespace separates, a backslash makes the next character literal)
and `extract_settings` (take ``-c name=value`` settings out).
Fed by: `proxy.session` (the client's startup packet).
Feeds: the startup packets the proxy sends to servers.
Owns: nothing but the syntax.
"""

from __future__ import annotations

from collections.abc import Iterable


def split_options(options: str) -> list[str]:
    """Split a startup `options` value the way PostgreSQL's pg_split_opts does:
    whitespace separates, a backslash makes the next character literal."""
    out: list[str] = []
    cur: list[str] = []
    have = False
    i = 0
    while i < len(options):
        ch = options[i]
        if ch.isspace():
            if have:
                out.append("".join(cur))
                cur, have = [], False
        elif ch == "\\" and i + 1 < len(options):
            i += 1
            cur.append(options[i])
            have = True
        else:
            cur.append(ch)
            have = True
        i += 1
    if have:
        out.append("".join(cur))
    return out


def join_options(tokens: Iterable[str]) -> str:
    """Inverse of `split_options` (escapes whitespace and backslashes)."""
    def esc(t: str) -> str:
        return "".join("\\" + c if c.isspace() or c == "\\" else c for c in t)
    return " ".join(esc(t) for t in tokens)


def extract_settings(options: str, prefix: str) -> tuple[dict[str, str], str]:
    """Take ``-c name=value`` / ``-cname=value`` / ``--name=value`` settings whose
    name starts with `prefix` out of an options string.

    Returns: (those settings with lowercased names, the remaining options string).
    """
    tokens = split_options(options)
    keep: list[str] = []
    taken: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        t = tokens[i]
        setting: str | None = None
        used = 1
        if t == "-c" and i + 1 < len(tokens):
            setting, used = tokens[i + 1], 2
        elif (t.startswith("-c") and len(t) > 2) or (t.startswith("--") and "=" in t):
            setting = t[2:]
        if setting is not None and "=" in setting:
            name, value = setting.split("=", 1)
            # PostgreSQL treats '-' and '_' alike in option names
            norm = name.strip().lower().replace("-", "_")
            if norm.startswith(prefix):
                taken[norm] = value
                i += used
                continue
        keep.extend(tokens[i:i + used])
        i += used
    return taken, join_options(keep)
