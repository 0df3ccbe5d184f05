"""
How the benchmark scripts print their tables: columns padded to the widest
cell, ` | ` between them, and a rule under the header row.
"""

from __future__ import annotations


def table(rows: list[tuple[str, ...]], indent: str = "") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print(indent + " | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            print(indent + "-+-".join("-" * w for w in widths))
