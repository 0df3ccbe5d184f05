# -*- test-case-name: tests.test_config -*-
"""
Sizes as people write them (C{64k}, C{1GiB}): pure, shared by the config,
C{/generate} and the client.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["parse_size"]

_SIZE = re.compile(r"([0-9]+)\s*(?:([kmgt])(?:i?b)?)?", re.IGNORECASE | re.ASCII)
_SIZE_FACTORS: Final = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """
    Bytes from C{"65536"}, C{"64k"}, C{"64KiB"}, C{"1M"}, C{"1MiB"}, C{"1GiB"},
    C{"2T"}...

    Suffixes are binary (k = 1024) whatever their spelling, because chunk
    sizes are thought of in powers of two; C{"64KB"} is therefore 65536 too.
    Raises L{ValueError} for anything else, including negative numbers and
    fractions, rather than guessing.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    number, unit = match.groups()
    return int(number) * _SIZE_FACTORS[(unit or "").lower()]
