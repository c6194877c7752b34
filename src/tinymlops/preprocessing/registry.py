"""The built-in blocks by name, and parsing a block entry of a config or manifest into its model."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tinymlops.preprocessing.audio import LogMel, Mfcc
from tinymlops.preprocessing.base import Block
from tinymlops.preprocessing.custom import Custom
from tinymlops.preprocessing.image import Image
from tinymlops.preprocessing.spectral import Spectral
from tinymlops.preprocessing.standardize import Standardize
from tinymlops.preprocessing.window_stats import WindowStats

BLOCKS: dict[str, type[Block]] = {c.model_fields["block"].default: c
                                  for c in (Standardize, WindowStats, Spectral, LogMel, Mfcc, Image)}
MAX_BLOCKS = 16


def parse_block(entry: Any, fitted: bool) -> Block:
    """Return the block an entry names (a name, or a mapping with ``block:``); ValueError naming it if unknown.

    In a config (``fitted`` False) the fields fitting sets are refused; in a manifest they are expected.
    """
    if isinstance(entry, Block):
        return entry
    if isinstance(entry, str):
        entry = {"block": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("block"), str):
        raise ValueError(f"a pre-processing block is a name or a mapping with 'block: <name>', not {entry!r:.80}")
    name = entry["block"]
    cls = BLOCKS.get(name) or (Custom if ":" in name else None)
    if cls is None:
        raise ValueError(f"unknown pre-processing block {name[:80]!r}; this tinymlops has "
                         f"{', '.join(BLOCKS)} and custom 'module:function' blocks")
    if not fitted:
        given = [f for f in cls.fitted_fields if entry.get(f) is not None]  # null: a dumped config
        if given:
            raise ValueError(f"block {name!r}: {', '.join(given)} are set by fitting, not in the config")
    return cls.model_validate(entry)


def parse_blocks(entries: Any, fitted: bool) -> list[Block]:
    if not isinstance(entries, list):
        raise ValueError("blocks must be a list")
    if len(entries) > MAX_BLOCKS:
        raise ValueError(f"{len(entries)} pre-processing blocks; at most {MAX_BLOCKS}")
    out = []
    for i, entry in enumerate(entries):
        try:
            out.append(parse_block(entry, fitted))
        except ValidationError as exc:  # name the entry: "blocks[1] (image): size.0: ..."
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            name = entry.get("block") if isinstance(entry, dict) else entry
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise ValueError(f"blocks[{i}] ({name}): {where + ': ' if where else ''}{msg}") from None
    return out
