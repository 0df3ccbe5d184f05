"""
C{python -m streamsvc.demo} end to end: the installed package (as in
tests/test_tap.py, the child twistd must find the installed plugin), run
from an unrelated directory, against a real server it starts and stops.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """50 tasks created, 3 updated and 1 deleted event seen, 49 rows in both exports, all cleaned up."""
    keep = tmp_path / "kept"
    out = subprocess.run(
        [sys.executable, "-m", "streamsvc.demo", "--tasks", "50", "--keep", str(keep)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    report = out.stdout
    assert out.returncode == 0, report + out.stderr
    assert out.stderr == ""
    assert "1. server RSS before: " in report
    assert re.search(r"^2\. created 50 tasks in ", report, re.M)
    assert len(re.findall(r"^ +event: updated ", report, re.M)) == 3
    assert len(re.findall(r"^ +event: deleted ", report, re.M)) == 1
    assert "saw 4 events: 3 updated, 1 deleted" in report
    assert re.search(r"^   export\.csv: 49 rows, \d+ bytes", report, re.M)
    assert re.search(r"^   stream\.ndjson: 49 rows, \d+ bytes", report, re.M)
    assert "49 tasks remain, as expected" in report
    assert "5. server RSS after: " in report

    # The server was stopped cleanly (SIGTERM: exit 0) and its directory removed.
    stopped = re.search(r"^stopped the server \(exit status 0\) and removed (\S+)$", report, re.M)
    assert stopped, report
    assert not Path(stopped.group(1)).exists()

    # What --keep wrote agrees with the report, read without the demo's own counting.
    with open(keep / "export.csv", newline="", encoding="utf-8") as f:
        header, *records = list(csv.reader(f))
    assert header == ["id", "title", "priority", "status", "created_at", "updated_at"]
    assert len(records) == 49
    tasks = [json.loads(line) for line in (keep / "stream.ndjson").read_text().splitlines() if line]
    assert [t["id"] for t in tasks] == [int(r[0]) for r in records] == list(range(1, 50))  # 50 deleted
    assert [t["status"] for t in tasks[:3]] == ["completed"] * 3
