"""How a setting is declared: a :class:`~oxidicom_py.settings.Settings` field that carries its
variable's name, parser, default and README text, and how those declarations become the
README's configuration table."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from oxidicom_py.setting_parsers import SettingsError


def setting(
    env: str,
    parse: Callable[[str, str], Any],
    *,
    default: Any = None,
    default_factory: Callable[[], Any] | None = None,
    shown: str,
    doc: str,
    ours: bool = False,
    derive: Callable[[dict[str, Any]], Any] | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A :class:`Settings` field read from ``env`` with ``parse(env, raw)``.

    ``shown``: the default as the README shows it; ``doc``: its meaning there; ``ours``: a
    variable the reference receiver does not have; ``derive``: the default computed from the
    fields before it (e.g. the files root from the state folder), when ``env`` is unset;
    ``aliases``: older names read when ``env`` is unset (two set to different values is an error).
    """
    metadata = {
        "env": env,
        "parse": parse,
        "shown": shown,
        "doc": doc,
        "ours": ours,
        "derive": derive,
        "aliases": aliases,
    }
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def cpus() -> int:
    """The default number of worker processes: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def markdown_table(fields: Sequence[dataclasses.Field[Any]]) -> str:
    """Which variables are ours, then one row per variable (name, default shown, meaning)."""
    ours = ", ".join(f"`{f.metadata['env']}`" for f in fields if f.metadata["ours"])
    lines = [
        f"Names are the reference's, except these, which are ours: {ours}.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{f.metadata['env']}` | {f.metadata['shown']} | {f.metadata['doc']} |" for f in fields]
    return "\n".join(lines) + "\n"


def read_fields(fields: Sequence[dataclasses.Field[Any]], env: Mapping[str, str]) -> dict[str, Any]:
    """Field name -> value: parsed from its variable when set, else derived from the fields
    before it, else its default."""
    values: dict[str, Any] = {}
    for f in fields:
        meta = f.metadata
        name, raw = meta["env"], env.get(meta["env"])
        for alias in meta["aliases"]:
            other = env.get(alias)
            if other is not None and raw is not None and other != raw:
                raise SettingsError(f"{alias}: set to another value than {name}, which it is another name of")
            if raw is None and other is not None:
                name, raw = alias, other
        if raw is not None:
            values[f.name] = meta["parse"](name, raw)
        elif meta["derive"] is not None:
            values[f.name] = meta["derive"](values)
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
        else:
            values[f.name] = f.default
    return values
