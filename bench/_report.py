"""
How the benchmark scripts print their tables: columns padded to the widest
cell, ` | ` between them, and a rule under the header row.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


def table(rows: list[tuple[str, ...]], indent: str = "") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print(indent + " | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            print(indent + "-+-".join("-" * w for w in widths))


@dataclass
class Results:
    """Each measurement's values per run (NaN for a missing one) and notes."""

    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    orders: list[str] = field(default_factory=list)

    def add(self, name: str, values: dict[str, float], note: str) -> None:
        r = self.values.setdefault(name, {})
        for k, v in values.items():
            r.setdefault(k, []).append(v)
        self.notes.setdefault(name, []).append(note)

    def all(self, name: str, key: str) -> list[float]:
        return [x for x in self.values.get(name, {}).get(key, []) if x == x]

    def median(self, name: str, key: str) -> float | None:
        v = self.all(name, key)
        return statistics.median(v) if v else None
