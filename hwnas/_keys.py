"""Strict TOML tables: an unknown key is an error naming it and the nearest known one.

A misspelt table (`[trian]`) or key (`hiden_size`) would otherwise be read as absent and its
defaults used without a word.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping
from typing import Any


def check_keys(table: Mapping[str, Any], known: Collection[str], *, where: str = "") -> None:
    """Raise ValueError naming the first key of `table` outside `known`, with the nearest known one.

    `where` is the dotted name of `table` (e.g. "space.down", "" for the top level of a file);
    a key whose value is a table is written `[where.key]`.
    """
    for key in table:
        if key in known:
            continue
        prefix = f"{where}." if where else ""
        show: Callable[[object], str]
        if isinstance(table[key], Mapping):
            what, show = f"table [{prefix}{key}]", f"[{prefix}{{}}]".format
        elif where:
            what, show = f"key {key!r} in [{where}]", repr
        else:
            what, show = f"top-level key {key!r}", repr
        near = difflib.get_close_matches(key, list(known), n=1)
        hint = (f"did you mean {show(near[0])}?" if near
                else f"expected one of {', '.join(show(k) for k in sorted(known))}")
        raise ValueError(f"unknown {what}; {hint}")


def check_name(name: object, *, what: str) -> str:
    """`name` if it is a plain file-name stem (letters, digits, '-', '_'), else ValueError quoting it.

    Device and experiment names become paths (`latency_tables/<device>/<experiment>.csv`), so a
    separator or `..` would let a config file write outside its folder.
    """
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"{what} must use letters, digits, '-' and '_' only (it names files), got {name!r}")
    return name
