"""Measure worker start-up to ready on a fresh embedded broker, and where the time goes.

Run: python benchmarks/worker_startup.py [--runs 3] [--session-timeout 10 60]
Prints one row per run: seconds from process start to /readyz = 200, and the
time of each phase read from the worker's own log lines.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson

from learnloop.embedded.broker import EmbeddedBroker, free_port

PHASES = {
    "consumer started": "Consumer]: Starting",
    "partitions assigned": "Executing _on_partitions_assigned",
    "recovery done": "Recovery complete",
    "worker ready": "Ready",
}


def run_once(bootstrap: str, session_timeout: float, workdir: Path) -> dict[str, float]:
    unique = uuid.uuid4().hex[:8]
    port = free_port()
    env = {
        **os.environ,
        "LEARNLOOP_KAFKA_BOOTSTRAP": bootstrap,
        "LEARNLOOP_BROKER_TRUE_END_OFFSETS": "true",
        "LEARNLOOP_APP_ID": f"bench-{unique}",
        "LEARNLOOP_TOPICS__EVENTS": f"events-{unique}",
        "LEARNLOOP_TOPICS__SIGNALS": f"signals-{unique}",
        "LEARNLOOP_WORKER_WEB_PORT": str(port),
        "LEARNLOOP_DATA_DIR": str(workdir / unique),
        "LEARNLOOP_LOG_FORMAT": "json",
        "LEARNLOOP_LOG_LEVEL": "info",
        "LEARNLOOP_SESSION_TIMEOUT_S": str(session_timeout),
        "LEARNLOOP_REBALANCE_TIMEOUT_S": str(session_timeout),
    }
    log_path = workdir / f"{unique}.log"
    started = time.time()
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "learnloop", "worker"], env=env,
                                   stdout=log, stderr=log)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() - started > 180:
                raise SystemExit("worker not ready in 180 s")
            time.sleep(0.05)
        ready = time.time() - started
    finally:
        process.terminate()
        process.wait(30)
    result = {"ready_s": ready}
    for line in log_path.read_text().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        for name, needle in PHASES.items():
            if name not in result and needle in str(entry.get("event", "")):
                stamp = entry["timestamp"].replace("Z", "+00:00")
                from datetime import datetime

                result[name] = datetime.fromisoformat(stamp).timestamp() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--session-timeout", type=float, nargs="+", default=[10.0, 60.0])
    args = parser.parse_args()
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        print(f"{'session/rebalance timeout':>26} {'run':>4} {'ready s':>8} "
              + " ".join(f"{p:>20}" for p in PHASES))
        for timeout in args.session_timeout:
            for run in range(args.runs):
                row = run_once(broker.bootstrap, timeout, Path(tmp))
                print(f"{timeout:>26.0f} {run:>4} {row['ready_s']:>8.2f} "
                      + " ".join(f"{row.get(p, float('nan')):>20.2f}" for p in PHASES))


if __name__ == "__main__":
    main()
