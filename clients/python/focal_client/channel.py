"""What both clients' channels share: message limits, the retry policy, TLS or mTLS credentials
and the bearer token."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grpc

SERVICES = ("focal.compressor.v1.Compressor", "focal.compressor.v1.Index")


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's own retries (service config): a call that fails with one of ``codes`` is sent again
    after a random delay in [0, min(initial x multiplier^(n-1), maximum)] (exponential backoff with
    full jitter), at most ``attempts`` times in all, within the call's deadline. The server answers
    RESOURCE_EXHAUSTED when its queue is full and UNAVAILABLE while it drains; both are safe to
    retry because the server did no work for the call."""

    attempts: int = 4
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    codes: tuple[str, ...] = ("RESOURCE_EXHAUSTED", "UNAVAILABLE")

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= 5:
            raise ValueError(f"retry attempts must be 1..5 (gRPC caps them at 5), not {self.attempts}")
        if self.initial_backoff_s <= 0 or self.max_backoff_s <= 0 or self.multiplier <= 0:
            raise ValueError("retry backoffs and multiplier must be positive")

    def service_config(self) -> str:
        if self.attempts == 1:
            return json.dumps({"methodConfig": [{"name": [{"service": s} for s in SERVICES]}]})
        policy = {"maxAttempts": self.attempts, "initialBackoff": f"{self.initial_backoff_s}s",
                  "maxBackoff": f"{self.max_backoff_s}s", "backoffMultiplier": self.multiplier,
                  "retryableStatusCodes": list(self.codes)}
        return json.dumps({"methodConfig": [{"name": [{"service": s} for s in SERVICES], "retryPolicy": policy}]})


DEFAULT_RETRIES = RetryPolicy()
NO_RETRIES = RetryPolicy(attempts=1)


def options(max_message_bytes: int, retry: RetryPolicy) -> list[tuple[str, object]]:
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 1 if retry.attempts > 1 else 0),
            ("grpc.service_config", retry.service_config())]


def credentials(root_ca: str | Path | None, client_cert: str | Path | None,
                client_key: str | Path | None) -> grpc.ChannelCredentials | None:
    """TLS when ``root_ca`` is given (the CA that signed the server's certificate); mTLS when the
    client's own certificate and key are given too; ``None`` means plaintext."""
    if root_ca is None:
        if client_cert or client_key:
            raise ValueError("a client certificate needs root_ca too (mTLS runs over TLS)")
        return None
    if bool(client_cert) != bool(client_key):
        raise ValueError("give both client_cert and client_key, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(root_ca).read_bytes(),
        private_key=Path(client_key).read_bytes() if client_key else None,
        certificate_chain=Path(client_cert).read_bytes() if client_cert else None)


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def open_channel(grpc_module, target: str, root_ca: str | Path | None, client_cert: str | Path | None,
                 client_key: str | Path | None, max_message_bytes: int, retry: RetryPolicy):
    """A channel to ``target`` from ``grpc_module`` (``grpc`` for the sync client, ``grpc.aio`` for the
    asyncio one): TLS when ``root_ca`` is given, the message limits and the retry policy."""
    secure = credentials(root_ca, client_cert, client_key)
    settings = options(max_message_bytes, retry)
    if secure is not None:
        return grpc_module.secure_channel(target, secure, options=settings)
    return grpc_module.insecure_channel(target, options=settings)
