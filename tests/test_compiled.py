"""torch.compile path: compiled code runs and gives eager's scores; a backend that fails is counted and
falls back to eager."""

from __future__ import annotations

import pytest
import torch

from engine import Engine, EngineOptions
from engine.compiled import CompiledForward
from engine.loader import load_model


@pytest.fixture(scope="module")
def tiny_model(tiny_fused_dir):
    return load_model(tiny_fused_dir)


def scores(engine: Engine) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    prefix = torch.randint(1, 160, (19,), generator=generator).tolist()
    rows = [torch.randint(1, 160, (n,), generator=generator).tolist() for n in (6, 14, 3)]
    return [s.logprobs for s in engine.score(prefix, rows)] + [torch.tensor(engine.generate(prefix, 6).token_ids)]


def test_compiled_engine_matches_eager(tiny_model, default_engine):
    eager = Engine(tiny_model, default_engine.tokenizer, EngineOptions(prefix_cache_bytes=0))
    compiled = Engine(tiny_model, default_engine.tokenizer, EngineOptions(prefix_cache_bytes=0, compile_model=True))
    assert compiled.compile_stats.state == "not compiled yet"
    torch._dynamo.utils.counters.clear()
    for ours, reference in zip(scores(compiled), scores(eager), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    # Compiled code ran: dynamo captured graphs, the backend compiled them all, none fell back.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert compiled.compile_stats.compiled > 0 and not compiled.compile_stats.failures
    assert compiled.compile_stats.state == "compiled"


def test_a_failing_compiler_falls_back_to_eager(tiny_model, default_engine):
    calls = []

    def broken_backend(graph, example_inputs):
        calls.append(len(example_inputs))
        raise RuntimeError("this backend cannot compile anything")

    eager = Engine(tiny_model, default_engine.tokenizer, EngineOptions(prefix_cache_bytes=0))
    fallback = Engine(tiny_model, default_engine.tokenizer, EngineOptions(prefix_cache_bytes=0))
    fallback.forward = CompiledForward(tiny_model, backend=broken_backend)
    assert fallback.compile_stats is fallback.forward.stats
    for ours, reference in zip(scores(fallback), scores(eager), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert calls, "the backend was never asked to compile"
    stats = fallback.compile_stats
    assert stats.state == "eager" and stats.compiled == 0 and len(stats.failures) == len(calls)
    assert all("this backend cannot compile anything" in reason for reason in stats.failures)
    assert not torch._dynamo.config.suppress_errors, "errors must not be suppressed process-wide"


def test_dynamos_request_to_trace_again_is_not_a_failure(tiny_model, default_engine):
    """Inductor raises ``RestartAnalysis`` to have dynamo trace a graph again (seen on the default model
    in bf16); it passes through, and the graph compiles on the second try."""
    from torch._dynamo.exc import TensorifyScalarRestartAnalysis

    calls = []

    def restarting_backend(graph, example_inputs):
        calls.append(len(example_inputs))
        if len(calls) == 1:
            raise TensorifyScalarRestartAnalysis
        return graph.forward

    eager = Engine(tiny_model, default_engine.tokenizer, EngineOptions(prefix_cache_bytes=0))
    restarted = Engine(tiny_model, default_engine.tokenizer, EngineOptions(prefix_cache_bytes=0))
    restarted.forward = CompiledForward(tiny_model, backend=restarting_backend)
    for ours, reference in zip(scores(restarted), scores(eager), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert len(calls) > 1 and not restarted.compile_stats.failures
    assert restarted.compile_stats.state == "compiled"
