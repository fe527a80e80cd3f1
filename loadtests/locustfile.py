"""Locust gRPC users of Focal, as a RAG stack calls it: ``CompressUser`` (the question-answering
path: compress retrieved chunks, or let Focal retrieve) and ``IndexUser`` (the retrieval side:
search, and upsert new documents), three of the first for one of the second. Separate users keep
the fast index calls flowing while compress calls wait for the engine, as they do in production:
one user mixing both would issue a search only between two long compress calls.

Every call is reported to locust as request type ``grpc`` named after the RPC; a failed call's
error is its gRPC status code name, so the failures table groups by code. What the runner needs
beyond locust's statistics (acknowledged upserts, a timeline of outcomes) is written at the end
of the run to ``$FOCAL_LOAD_RECORD``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time

import grpc
import grpc.experimental.gevent as grpc_gevent
from focal_client import NO_RETRIES
from locust import User, between, events, task

from compressor.client import FocalClient
from loadtests.payloads import load_rows, retrieved

grpc_gevent.init_gevent()  # grpc's threads must cooperate with locust's greenlets

NAMESPACE = "load"
ROWS = load_rows()
ACKNOWLEDGED: list[str] = []  # upserted document ids the server acknowledged
TIMELINE: list[tuple[float, str]] = []  # (completion time, status code name) of every call
_user_numbers = itertools.count()


class RpcFailure(Exception):
    """A gRPC status other than OK (the message is the code's name)."""


class FocalUser(User):
    abstract = True
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        # No client retries: the scenarios count the server's own refusals (RESOURCE_EXHAUSTED, UNAVAILABLE).
        self.client = FocalClient(self.host, timeout=float(os.environ.get("FOCAL_LOAD_TIMEOUT", "60")),
                                  retry=NO_RETRIES)
        self.number = next(_user_numbers)
        self.rng = random.Random(self.number)
        self.upserts = itertools.count()

    def on_stop(self) -> None:
        self.client.close()

    def _call(self, name: str, call) -> None:
        started = time.perf_counter()
        error = None
        try:
            call()
            code = "OK"
        except grpc.RpcError as failure:
            code = failure.code().name
            error = RpcFailure(code)
        TIMELINE.append((time.time(), code))
        events.request.fire(request_type="grpc", name=name, response_time=(time.perf_counter() - started) * 1000,
                            response_length=0, exception=error, context={})



class CompressUser(FocalUser):
    weight = 3

    @task(3)
    def compress_with_chunks(self) -> None:
        row = self.rng.choice(ROWS)
        self._call("Compress", lambda: self.client.compress(row["question"], retrieved(row, self.rng), rate=0.3))

    @task(1)
    def compress_with_retrieval(self) -> None:
        row = self.rng.choice(ROWS)
        self._call("Compress+retrieval", lambda: self.client.compress(
            row["question"], [], rate=0.3, retrieve_top_k=5, namespace=NAMESPACE))



class IndexUser(FocalUser):
    weight = 1

    @task(3)
    def search(self) -> None:
        row = self.rng.choice(ROWS)
        self._call("Search", lambda: self.client.search(row["question"], 5, namespace=NAMESPACE))

    @task(1)
    def upsert(self) -> None:
        row = self.rng.choice(ROWS)
        documents = [(f"u{self.number}-{next(self.upserts)}", c["text"], {"source": "locust"})
                     for c in self.rng.sample(row["chunks"], 2)]

        def call() -> None:
            self.client.upsert(documents, namespace=NAMESPACE)
            ACKNOWLEDGED.extend(doc_id for doc_id, _, _ in documents)

        self._call("Upsert", call)


@events.quitting.add_listener
def _write_record(environment, **_kwargs) -> None:
    path = os.environ.get("FOCAL_LOAD_RECORD")
    if path:
        with open(path, "w") as handle:
            json.dump({"acknowledged": ACKNOWLEDGED, "timeline": TIMELINE}, handle)
