"""``torch.compile`` of the model's forward, with every graph that fails to compile logged, counted
and run eagerly instead.

What compiling buys on a given machine is measured by ``python -m bench.engine`` (its compiled rows,
in bench/results/engine.md). The price is compile time on the first call of each kind of shape, so
it pays for a long-running server that warms up before taking traffic, not for a one-shot command.

Shapes are compiled dynamic (batch rows and lengths vary per request). There is no process-wide
error suppression: the backend is wrapped so that a graph the backend cannot compile runs through
its own eager code (dynamo's graph, uncompiled), and the failure with its reason is kept in
``CompileStats``, which the server's start-up log and metrics report. The failure is caught when the
graph is compiled, before it runs, so no cache is left half-written. Errors in dynamo's tracing
itself are not caught: they surface as errors; nor is dynamo's request to trace a graph again
(``RestartAnalysis``, raised from inside inductor), which is how compiling goes on, not a failure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.model import CausalLM

log = logging.getLogger("focal.engine")


@dataclass
class CompileStats:
    """Graphs handed to the backend: how many compiled, and why the others did not."""

    compiled: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        """``compiled`` (every graph so far), ``partly compiled``, ``eager`` (none compiled) or
        ``not compiled yet`` (no forward has run)."""
        if not self.failures:
            return "compiled" if self.compiled else "not compiled yet"
        return "partly compiled" if self.compiled else "eager"


class CompiledForward:
    """The model's forward through ``torch.compile``; ``stats`` says what actually compiled."""

    def __init__(self, model: CausalLM, backend: str | Callable = "inductor") -> None:
        import torch._dynamo  # imported only when compiling: it is heavy

        self.model = model
        self.stats = CompileStats()
        self._lock = threading.Lock()
        inner = torch._dynamo.lookup_backend(backend) if isinstance(backend, str) else backend
        self._name = backend if isinstance(backend, str) else getattr(backend, "__name__", "backend")
        self._compiled = torch.compile(model, backend=self._guarded(inner), dynamic=True)

    def _guarded(self, inner: Callable) -> Callable:
        from torch._dynamo.exc import RestartAnalysis

        def compile_graph(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
            try:
                compiled = inner(graph, example_inputs)
            except RestartAnalysis:
                raise  # not a failure: dynamo's signal to trace the graph again (e.g. with a scalar specialised)
            except Exception as exc:  # any backend failure: this graph runs eagerly, the reason is kept
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                with self._lock:
                    self.stats.failures.append(reason)
                log.warning("a graph did not compile; it runs eagerly",
                            extra={"fields": {"backend": self._name, "reason": reason}})
                return graph.forward
            with self._lock:
                self.stats.compiled += 1
            return compiled

        return compile_graph

    def __call__(self, *args, **kwargs):
        return self._compiled(*args, **kwargs)
