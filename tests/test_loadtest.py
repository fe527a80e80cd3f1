"""A short locust run against a real server on loopback, so the load tests cannot rot: the steady
scenario must answer every call, the overload scenario must refuse with RESOURCE_EXHAUSTED only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(tmp_path: Path, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "loadtests.run", "--out", str(tmp_path), "--seed-passages", "40",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_steady_load_answers_every_call(tmp_path: Path) -> None:
    result = run(tmp_path, "--scenario", "steady", "--users", "4", "--duration", "30", "--p95-ms", "50000",
                 "--timeout", "60")
    steady = result["scenarios"]["steady"]
    assert result["failures"] == 0 and result["lost_upserts"] == 0 and result["rps"] > 0
    assert {"Compress", "Search"} <= set(steady["per_rpc"])
    for report in ("steady_stats.csv", "steady_failures.csv", "steady.html"):
        assert (tmp_path / report).stat().st_size > 0


def test_overload_is_refused_fast_and_nothing_else_fails(tmp_path: Path) -> None:
    result = run(tmp_path, "--scenario", "overload", "--overload-users", "16", "--duration", "20")
    overload = result["scenarios"]["overload"]
    assert overload["failures"] == 0 and overload["refused"] > 0
    assert set(overload["errors_by_code"]) == {"RESOURCE_EXHAUSTED"}
