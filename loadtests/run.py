"""Run locust headless against a real Focal server on loopback, and judge the run.

Scenarios (each starts its own server with a fresh data directory, seeds the ``load`` namespace
with passages from the shared data, runs locust for a bounded time with a bounded number of users,
then stops the server):

- ``steady``: the default server; every call must succeed and p95 must stay under ``--p95-ms``.
- ``overload``: a server with a tiny admission queue under many users; RESOURCE_EXHAUSTED (fast
  refusal) is expected and counted as ``refused``, any other failure fails the run.
- ``fault``: steady load, then the server is killed with SIGKILL a third of the way in and
  restarted at once; UNAVAILABLE while it is down is expected; the run reports the recovery time
  (kill to the next successful call) and checks that no acknowledged upsert was lost.

Each scenario writes ``<out>/<name>_stats.csv`` (and locust's other CSVs) and ``<out>/<name>.html``.
The last line printed is one JSON object: the steady scenario's ``rps``, ``p50_ms``, ``p95_ms``,
``p99_ms``, ``failures``, the overload's ``refused``, the fault's ``recovery_s`` and
``lost_upserts``, and every scenario in full. The exit status is 1 when a check fails.

    python -m loadtests.run --scenario all --users 8 --duration 60 --p95-ms 30000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from compressor.client import FocalClient
from devtools.data import ROOT
from devtools.ports import free_port
from devtools.server_process import ServerProcess
from loadtests.payloads import load_rows, passages

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


@dataclass
class Scenario:
    name: str
    server: dict[str, str] = field(default_factory=dict)  # FOCAL_* settings of the server
    expected: frozenset[str] = frozenset()  # status codes that are part of the scenario, not failures
    kill_at: float | None = None  # fraction of the run after which the server is killed


SCENARIOS = {
    "steady": Scenario("steady"),
    "overload": Scenario("overload", {"FOCAL_MAX_BATCH": "2", "FOCAL_QUEUE_DEPTH": "2"},
                         frozenset({"RESOURCE_EXHAUSTED"})),
    "fault": Scenario("fault", {}, frozenset({"UNAVAILABLE"}), kill_at=1 / 3),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def seed(port: int, count: int) -> None:
    corpus = passages(load_rows(), count)
    with FocalClient(f"127.0.0.1:{port}", timeout=300) as client:
        for start in range(0, len(corpus), 50):
            client.upsert([(i, t, {"source": "seed"}) for i, t in corpus[start:start + 50]], namespace="load")
    log(f"seeded namespace 'load' with {len(corpus)} passages")


def read_stats(prefix: Path) -> tuple[dict[str, dict[str, str]], list[dict[str, str]]]:
    with Path(f"{prefix}_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    with Path(f"{prefix}_failures.csv").open() as handle:
        failures = list(csv.DictReader(handle))
    return rows, failures


def lost_upserts(data_dir: Path, acknowledged: list[str]) -> int:
    from compressor.retrieval.store import IndexStore

    store = IndexStore(data_dir)
    try:
        present = store.namespaces["load"].documents if "load" in store.namespaces else {}
        return sum(doc_id not in present for doc_id in acknowledged)
    finally:
        store.close(snapshot=False)


def run_scenario(scenario: Scenario, users: int, duration: int, p95_ms: float | None, out: Path,
                 seed_passages: int, timeout: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix=f"focal-{scenario.name}-"))
    port = free_port()
    settings = {"FOCAL_DATA_DIR": str(data_dir), "FOCAL_LOG_LEVEL": "WARNING", **scenario.server}
    server = ServerProcess(port, settings, out / f"{scenario.name}_server.log")
    log(f"{scenario.name}: starting the server on 127.0.0.1:{port}")
    server.start()
    seed(port, seed_passages)
    record = out / f"{scenario.name}_record.json"
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--users", str(users),
               "--spawn-rate", str(users), "--run-time", f"{duration}s", "--host", f"127.0.0.1:{port}",
               "--csv", str(out / scenario.name), "--html", str(out / f"{scenario.name}.html"),
               "--stop-timeout", "30", "--exit-code-on-error", "0", "--loglevel", "WARNING"]
    env = {**os.environ, "FOCAL_LOAD_RECORD": str(record), "PYTHONPATH": str(ROOT), "FOCAL_LOAD_TIMEOUT": str(timeout)}
    log(f"{scenario.name}: locust, {users} users for {duration} s")
    locust = subprocess.Popen(command, cwd=ROOT, env=env)
    killed_at: float | None = None
    restart_s: float | None = None
    try:
        if scenario.kill_at is not None:
            time.sleep(duration * scenario.kill_at)
            killed_at = time.time()
            server.kill()
            log(f"{scenario.name}: server killed with SIGKILL; restarting")
            restart_s = server.start()
            log(f"{scenario.name}: server healthy again after {restart_s:.1f} s")
        locust.wait(timeout=duration + 180)
    finally:
        if locust.poll() is None:
            locust.kill()
        server.stop()
    rows, failure_rows = read_stats(out / scenario.name)
    total = rows["Aggregated"]
    by_code: dict[str, int] = {}
    for row in failure_rows:
        code = row["Error"].split("(")[-1].strip("')\"") if "(" in row["Error"] else row["Error"]
        by_code[code] = by_code.get(code, 0) + int(row["Occurrences"])
    history = json.loads(record.read_text())
    result = {
        "users": users, "duration_s": duration,
        "requests": int(total["Request Count"]), "rps": round(float(total["Requests/s"]), 2),
        "p50_ms": float(total["50%"]), "p95_ms": float(total["95%"]), "p99_ms": float(total["99%"]),
        "failures": sum(n for code, n in by_code.items() if code not in scenario.expected),
        "refused": by_code.get("RESOURCE_EXHAUSTED", 0),
        "errors_by_code": by_code,
        "per_rpc": {name: {"requests": int(r["Request Count"]), "p50_ms": float(r["50%"]), "p95_ms": float(r["95%"])}
                    for name, r in rows.items() if name != "Aggregated"},
        "acknowledged_upserts": len(history["acknowledged"]),
    }
    result["refusal_rate"] = round(result["refused"] / max(result["requests"], 1), 3)
    if killed_at is not None:
        recovered = [t for t, code in history["timeline"] if t > killed_at and code == "OK"]
        result["recovery_s"] = round(recovered[0] - killed_at, 2) if recovered else None
        result["restart_s"] = round(restart_s, 2)
    result["lost_upserts"] = lost_upserts(data_dir, history["acknowledged"])
    problems = []
    if result["failures"]:
        problems.append(f"{result['failures']} unexpected failures: {by_code}")
    if result["lost_upserts"]:
        problems.append(f"{result['lost_upserts']} acknowledged upserts lost")
    if scenario.name == "steady" and p95_ms is not None and result["p95_ms"] > p95_ms:
        problems.append(f"p95 {result['p95_ms']:.0f} ms exceeds the threshold of {p95_ms:.0f} ms")
    if scenario.kill_at is not None and result.get("recovery_s") is None:
        problems.append("no call succeeded after the restart")
    if result["requests"] == 0:
        problems.append("no request completed")
    result["problems"] = problems
    log(f"{scenario.name}: {result['requests']} requests, {result['rps']} req/s, p50 {result['p50_ms']:.0f} ms, "
        f"p95 {result['p95_ms']:.0f} ms, failures {result['failures']}, refused {result['refused']}"
        + (f", recovery {result.get('recovery_s')} s" if killed_at else "") + (f" -- {problems}" if problems else ""))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--users", type=int, default=8, help="users of the steady and fault scenarios")
    parser.add_argument("--overload-users", type=int, default=24, help="users of the overload scenario")
    parser.add_argument("--duration", type=int, default=60, help="seconds of load per scenario")
    parser.add_argument("--p95-ms", type=float, default=None,
                        help="fail when the steady p95 exceeds this (below the client deadline, --timeout)")
    parser.add_argument("--timeout", type=float, default=60, help="the clients' deadline per call, in seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    parser.add_argument("--seed-passages", type=int, default=200, help="passages indexed before the run")
    args = parser.parse_args(argv)
    if args.p95_ms is not None and args.p95_ms >= args.timeout * 1000:
        parser.error(f"--p95-ms {args.p95_ms:.0f} can never fire: no call lasts past the clients' deadline of "
                     f"{args.timeout:.0f} s (--timeout)")
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = {}
    for name in names:
        users = args.overload_users if name == "overload" else args.users
        results[name] = run_scenario(SCENARIOS[name], users, args.duration, args.p95_ms, args.out,
                                     args.seed_passages, args.timeout)
    summary: dict = {}
    if "steady" in results:
        summary.update({k: results["steady"][k] for k in ("rps", "p50_ms", "p95_ms", "p99_ms", "failures")})
    if "overload" in results:
        summary.update(refused=results["overload"]["refused"], refusal_rate=results["overload"]["refusal_rate"])
    if "fault" in results:
        summary.update(recovery_s=results["fault"].get("recovery_s"), lost_upserts=results["fault"]["lost_upserts"])
    if len(names) == 1:
        summary = {**{k: results[names[0]][k] for k in ("rps", "p50_ms", "p95_ms", "p99_ms", "failures", "refused",
                                                         "lost_upserts")}, **summary}
    summary["failures"] = sum(r["failures"] for r in results.values())
    summary["lost_upserts"] = sum(r["lost_upserts"] for r in results.values())
    summary["scenarios"] = results
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 1 if any(r["problems"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
