"""The framework's floor: a Faust agent that only takes, decodes and acks the events.

Run by ``pipeline_throughput.py`` (not on its own) with the worker's environment:
same settings, consumer, transport, buffers, batch size and GC tuning as
``learnloop worker`` (``streams.app.faust_options``), and one agent that reads
the events topic the way the join does (``noack_take`` micro-batches, Avro
decode, ack each) and does nothing else. Its CPU per event is what any learnloop
stage built on Faust's stream pays before it does any work, so it bounds what
optimising learnloop's own code can reach in one process.

Writes ``{"seconds", "cpu_seconds", "events"}`` to ``--out`` once ``--events``
were acked (timed from the first batch), then waits to be stopped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import faust
import orjson

from learnloop.codec import make_codec
from learnloop.settings import load_settings
from streams.app import faust_options, use_transport
from streams.run import run_app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    settings = load_settings()
    app = faust.App(f"{settings.app_id}-bare", **faust_options(settings, args.bootstrap))
    use_transport(app, settings)
    topic = app.topic(settings.topics.events, key_serializer="raw", value_serializer="raw")
    codec = make_codec(settings)
    seen = 0
    started = cpu_started = 0.0

    @app.agent(topic, name="bare")  # type: ignore[misc]
    async def bare(stream: Any) -> None:
        nonlocal seen, started, cpu_started
        async for events in stream.noack_take(
            settings.batch_max_events, within=settings.batch_max_wait_s
        ):
            if not seen:
                started, cpu_started = time.perf_counter(), time.process_time()
            for event in events:
                codec.decode(event.message.value)
            seen += len(events)
            for event in events:
                await stream.ack(event)
            if seen >= args.events and not args.out.exists():
                args.out.write_bytes(
                    orjson.dumps(
                        {
                            "events": seen,
                            "seconds": time.perf_counter() - started,
                            "cpu_seconds": time.process_time() - cpu_started,
                        }
                    )
                )

    run_app(app, settings)


if __name__ == "__main__":
    main()
