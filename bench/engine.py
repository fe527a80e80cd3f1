"""Engine speed against transformers (and llama.cpp, when installed) on identical weights, in one run.

Models: (a) a real-width Mellum2 slice (hidden 2304, 32/4 heads, 64 experts top-8 of width 896,
vocab 98304; 4 layers: 3 sliding + 1 full, all sparse; random weights), shared tensor-for-tensor
with transformers' ``MellumForCausalLM``; (b) the default model (SmolLM2-135M-Instruct GGUF), read
by each side from the same file.

Each side runs in every dtype it offers here (ours: fp32, bf16 with weights reordered for oneDNN
once, int8 weights with bf16 activations, and for the default model bf16 (not reordered) and int8
under ``torch.compile``; transformers: fp32,
bf16) and each figure compares the fastest variant of each side (the table says which). Sides
alternate inside every repeat and the best repeat counts, so machine noise hits all alike. Prefill
computes logits for the last position only; decode is the median step after a 512-token prompt.
Ratios are ours/theirs in speed: above 1 means we are faster.

Also measured in the same run: the machine's matmul FLOP/s and copy bandwidth (fp32, bf16), our
prefill at 2048 as a fraction of the FLOP/s limit (active FLOPs per token x tokens/s) and our
decode as a fraction of the bandwidth limit (weight bytes read per token / time per token), and
the KV cache's bytes at 32K tokens of the slice against (full layers x n + sliding layers x
window) x per-token size. llama.cpp (``llama-cpp-python``, 2 threads) runs the same weights as
GGUF: the slice in F32, BF16 and Q8_0, the default model's own Q4_1 file. And the prefix cache:
scoring after a shared 1024-token prefix, recomputed against cached. The ratios are plotted in
``bench/results/engine.png``.

    python -m bench.engine [--threads 2] [--repeats 3] [--decode-steps 16] [--quick]
    python -m bench.engine --long 131072     # only: prefill the slice to 128K, KV bytes on the way
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.report import RESULTS, best_of, markdown_table, progress, write
from engine import Engine, default_model_path
from engine.compiled import compile_forward
from engine.config import ModelConfig, from_hf_dict
from engine.loader import build_model, load_model
from engine.model import CausalLM
from engine.packed import PackedExperts, PackedLinear, pack_bf16
from engine.quant import Int8Experts, quantize_int8

SLIDING, FULL = "sliding_attention", "full_attention"
MELLUM_SLICE = {
    "model_type": "mellum", "vocab_size": 98304, "hidden_size": 2304, "intermediate_size": 7168,
    "num_hidden_layers": 4, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "sliding_window": 1024,
    "num_experts": 64, "num_experts_per_tok": 8, "moe_intermediate_size": 896, "norm_topk_prob": True,
    "tie_word_embeddings": False, "layer_types": [SLIDING, SLIDING, SLIDING, FULL],
    "mlp_layer_types": ["sparse"] * 4, "bos_token_id": 0, "eos_token_id": 28,
    "rope_parameters": {
        FULL: {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 16.0,
               "original_max_position_embeddings": 8192, "beta_fast": 32.0, "beta_slow": 1.0,
               "attention_factor": 1.2772588722239782},
        SLIDING: {"rope_type": "default", "rope_theta": 500000.0},
    },
}


class Ours:
    def __init__(self, model: CausalLM, chunk: int = 2048, compiled: bool = False) -> None:
        self.model, self.chunk = model, chunk
        self.forward = compile_forward(model) if compiled else model
        if compiled:  # compile the prefill and decode graphs before anything is timed
            progress("compiling (prefill and decode graphs)")
            for length in (64, 96):  # a second length makes dynamo compile the shape-generic graph
                _, cache = self.prefill(torch.arange(length)[None] % model.config.vocab_size)
                self.step(torch.tensor([[1]]), cache)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor):
        cache = self.model.new_cache(1)
        cache.reserve(ids.shape[1] + 64)
        hidden = None
        for start in range(0, ids.shape[1], self.chunk):
            hidden = self.forward(ids[:, start : start + self.chunk], cache)
        return self.model.logits(hidden[:, -1:]), cache

    @torch.inference_mode()
    def step(self, token: torch.Tensor, cache) -> torch.Tensor:
        return self.model.logits(self.forward(token, cache))


class Theirs:
    def __init__(self, model) -> None:
        self.model = model

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits, out.past_key_values

    @torch.inference_mode()
    def step(self, token: torch.Tensor, cache) -> torch.Tensor:
        return self.model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1).logits


def _decode_ms(side, prompt: torch.Tensor, token: torch.Tensor, steps: int) -> float:
    """Median milliseconds of one decode step after ``prompt`` (prefill excluded)."""
    _, cache = side.prefill(prompt)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        side.step(token, cache)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(sides: dict, vocab: int, lengths: tuple[int, ...], repeats: int, steps: int) -> dict[str, dict]:
    """Figures per side; the sides alternate inside every repeat so that machine noise hits both."""
    generator = torch.Generator().manual_seed(0)
    figures: dict[str, dict[str, float]] = {name: {} for name in sides}
    for length in lengths:
        ids = torch.randint(0, vocab, (1, length), generator=generator)
        best = {name: float("inf") for name in sides}
        for _ in range(repeats):
            for name, side in sides.items():
                best[name] = min(best[name], best_of(1, lambda side=side, ids=ids: side.prefill(ids)))
        for name in sides:
            figures[name][f"prefill_{length}_tok_s"] = length / best[name]
        progress(f"prefill {length}: " + ", ".join(f"{n} {figures[n][f'prefill_{length}_tok_s']:.1f} tok/s"
                                                     for n in sides))
    prompt = torch.randint(0, vocab, (1, 512), generator=generator)
    token = torch.randint(0, vocab, (1, 1), generator=generator)
    best = {name: float("inf") for name in sides}
    for _ in range(repeats):
        for name, side in sides.items():
            best[name] = min(best[name], _decode_ms(side, prompt, token, steps))
    for name in sides:
        figures[name]["decode_ms_per_token"] = best[name]
    progress("decode: " + ", ".join(f"{n} {best[n]:.1f} ms/token" for n in sides))
    return figures


class LlamaCpp:
    """llama.cpp through llama-cpp-python on a GGUF file: prompt processing and one-token steps."""

    def __init__(self, path: Path, threads: int, context: int) -> None:
        from llama_cpp import Llama

        self.model = Llama(model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                           n_batch=512, n_ubatch=512, verbose=False)

    def prefill(self, ids: torch.Tensor):
        self.model.reset()
        self.model.eval(ids[0].tolist())
        return None, None

    def step(self, token: torch.Tensor, _cache) -> None:
        self.model.eval(token[0].tolist())


def mellum_state() -> dict[str, torch.Tensor]:
    from transformers import MellumConfig, MellumForCausalLM

    progress("building the real-width Mellum2 slice (random weights, ~8.5 GB fp32)")
    torch.manual_seed(0)
    with torch.device("meta"):
        skeleton = MellumForCausalLM(MellumConfig(**MELLUM_SLICE))
    state = {}
    for name, param in skeleton.named_parameters():
        if "norm" in name:
            state[name] = 1.0 + 0.1 * torch.randn(param.shape)
        else:
            state[name] = torch.randn(param.shape) * (0.5 / param.shape[-1] ** 0.5)
    return state


def theirs_mellum(state: dict[str, torch.Tensor], dtype: torch.dtype):
    from transformers import MellumConfig, MellumForCausalLM

    with torch.device("meta"):
        model = MellumForCausalLM(MellumConfig(**MELLUM_SLICE))
    converted = state if dtype == torch.float32 else {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(converted, assign=True, strict=False)
    model.model.rotary_emb = type(model.model.rotary_emb)(model.config)  # real tables, not meta
    return model.eval()


def mellum_sides(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """Built one by one so that at most one transient bf16 copy exists (the whole set is ~20 GB)."""
    config = from_hf_dict(MELLUM_SLICE)
    int8 = Ours(quantize_int8(build_model(config, state, torch.bfloat16)))
    return {
        "ours fp32": Ours(build_model(config, state, torch.float32)),  # shares the tensors of `state`
        "ours bf16": Ours(pack_bf16(build_model(config, state, torch.bfloat16))),
        "ours int8": int8,
        "transformers fp32": Theirs(theirs_mellum(state, torch.float32)),
        "transformers bf16": Theirs(theirs_mellum(state, torch.bfloat16)),
    }


def default_sides() -> dict[str, object]:
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    progress(f"loading the default model from {path.name} on both sides")
    sides: dict[str, object] = {}
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        model = load_model(path, dtype)
        sides[f"ours {label}"] = Ours(pack_bf16(model) if dtype == torch.bfloat16 else model)
    sides["ours int8"] = Ours(quantize_int8(load_model(path, torch.bfloat16)))
    sides["ours bf16+compile"] = Ours(load_model(path, torch.bfloat16), compiled=True)
    sides["ours int8+compile"] = Ours(quantize_int8(load_model(path, torch.bfloat16)), compiled=True)
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        sides[f"transformers {label}"] = Theirs(AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype).eval())
    return sides


def fastest(figures: dict[str, dict[str, float]], side: str, key: str, higher: bool = True) -> str:
    """The variant of ``side`` ("ours", "transformers", "llama.cpp") that is fastest on ``key``."""
    variants = [name for name in figures if name.startswith(side) and key in figures[name]]
    return (max if higher else min)(variants, key=lambda name: figures[name][key])


def machine_limits(threads: int) -> dict[str, float]:
    """Achieved matmul FLOP/s and copy bandwidth of this machine, fp32 and bf16."""
    limits = {}
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
        seconds = best_of(5, lambda a=a, b=b: torch.mm(a, b))
        limits[f"matmul_gflops_{label}"] = 2 * 4096**3 / seconds / 1e9
        source = torch.empty(256 * 2**20, dtype=torch.float32)
        source.normal_()
        target = torch.empty_like(source)
        seconds = best_of(5, lambda s=source, t=target: t.copy_(s))
        limits["copy_gb_s"] = 2 * source.numel() * 4 / seconds / 1e9  # read + write
    progress(f"machine: matmul {limits['matmul_gflops_fp32']:.0f} GFLOP/s fp32, {limits['matmul_gflops_bf16']:.0f} "
             f"bf16; copy {limits['copy_gb_s']:.1f} GB/s ({threads} threads)")
    return limits


def active_flops_per_token(config: ModelConfig, context: int) -> float:
    """Multiply-adds x 2 per prefill token: projections, active experts, router and attention scores
    at the mean attended length of a ``context``-token prompt (the lm_head runs for one row only)."""
    h, d = config.hidden_size, config.head_dim
    projections = h * (config.num_attention_heads + 2 * config.num_key_value_heads) * d \
        + config.num_attention_heads * d * h
    flops = 0.0
    for kind, mlp in zip(config.layer_types, config.mlp_layer_types):
        if mlp == "sparse":
            mlp_params = config.num_experts_per_tok * 3 * h * config.moe_intermediate_size + config.num_experts * h
        else:
            mlp_params = 3 * h * config.intermediate_size
        window = config.sliding_window if kind == "sliding_attention" and config.sliding_window else context
        attended = sum(min(position + 1, window) for position in range(context)) / context
        flops += 2 * (projections + mlp_params) + 4 * attended * config.num_attention_heads * d
    return flops


def decode_weight_bytes(model: CausalLM) -> float:
    """Weight bytes one decode step reads: everything but the embedding table and the idle experts."""
    total = 0.0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name.startswith("model.embed_tokens") or "rotary" in name:
            continue
        total += tensor.numel() * tensor.element_size()
    for module in model.modules():  # oneDNN-reordered weights are plain attributes, not parameters
        if isinstance(module, PackedLinear | PackedExperts):
            total += module.weight_bytes()
    for module in model.modules():  # only top-k of the experts are read per token
        if isinstance(module, Int8Experts):
            stored = sum(t.numel() * t.element_size() for t in module.buffers())
        elif isinstance(module, PackedExperts):
            stored = module.weight_bytes()
        elif module.__class__.__name__ == "Experts":
            stored = sum(t.numel() * t.element_size() for t in module.parameters())
        else:
            continue
        total -= stored * (1 - model.config.num_experts_per_tok / model.config.num_experts)
    if model.config.tie_word_embeddings and isinstance(model.lm_head, torch.nn.Linear):
        total += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    return total


def kv_at(model: CausalLM, tokens: int, chunk: int = 2048, every: int = 0) -> dict[str, object]:
    """Prefill ``tokens`` in chunks into a cache that grows as it fills (no reservation) and compare
    the bytes it holds with the formula, at the end and (``every`` > 0) every ``every`` tokens on
    the way. Between powers of two the full layers hold up to 2x (doubling growth); ``Engine``
    reserves a prompt's length up front, which holds exactly the formula."""
    config = model.config
    cache = model.new_cache(1)
    ids = torch.randint(0, config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(3))
    per_token = 2 * config.num_key_value_heads * config.head_dim * cache.dtype.itemsize
    sliding = sum(kind == "sliding_attention" for kind in config.layer_types)

    def formula(n: int) -> int:
        return ((config.num_hidden_layers - sliding) * n + sliding * config.sliding_window) * per_token

    on_the_way = []
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, tokens, chunk):
            model(ids[:, start:start + chunk], cache)
            done = min(start + chunk, tokens)
            if every and done % every == 0:
                on_the_way.append({"tokens": done, "bytes": cache.nbytes(), "formula_bytes": formula(done),
                                   "ratio": cache.nbytes() / formula(done),
                                   "prefill_tok_s": done / (time.perf_counter() - started)})
            if start // chunk % 4 == 3:
                progress(f"kv: {done}/{tokens} tokens, {cache.nbytes() / 2**20:.0f} MiB")
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "bytes": cache.nbytes(), "formula_bytes": formula(tokens),
            "ratio": cache.nbytes() / formula(tokens), "prefill_tok_s": tokens / seconds, "on_the_way": on_the_way}


def long_context(tokens: int) -> None:
    """The slice in bf16 (ours only) prefilled to ``tokens`` (YaRN on the full layer): KV bytes
    against the formula every 16K tokens, and the prefill rate; ``bench/results/engine_long``."""
    config = from_hf_dict(MELLUM_SLICE)
    if tokens > config.max_position_embeddings:
        raise SystemExit(f"--long {tokens} exceeds the slice's context of {config.max_position_embeddings}")
    model = build_model(config, mellum_state(), torch.bfloat16)
    figures = kv_at(model, tokens, every=16384)
    rows = [[f"{p['tokens']}", f"{p['bytes'] / 2**20:.1f}", f"{p['formula_bytes'] / 2**20:.1f}", f"{p['ratio']:.3f}",
             f"{p['prefill_tok_s']:.0f}"] for p in figures["on_the_way"]]
    lines = ["# Long context: the real-width Mellum2 slice (bf16, chunks of 2048), KV cache against the formula", "",
             "Formula: (full layers x n + sliding layers x window) x 2 x kv_heads x head_dim x 2 bytes. The cache",
             "grows by doubling here (no reservation): between powers of two it holds up to 2x; Engine reserves",
             "exactly.",
             "", markdown_table(["tokens", "KV MiB held", "KV MiB formula", "ratio", "prefill tok/s so far"], rows)]
    write("engine_long", {"ratios": {"kv_bytes_over_formula": figures["ratio"]}, "raw": figures}, "\n".join(lines))


def default_tokenizer():
    from engine.gguf_read import GGUFFile
    from engine.tokenizer import from_gguf

    return from_gguf(GGUFFile(default_model_path()))


def prefix_reuse(model: CausalLM, prefix_tokens: int = 1024, rows: int = 8, row_tokens: int = 96,
                 repeats: int = 3) -> dict[str, float]:
    """``Engine.score`` of ``rows`` continuations after a shared prefix (a long instruction), without
    the prefix cache and with it warm: the time a repeated instruction costs per request."""
    tokenizer = default_tokenizer()
    generator = torch.Generator().manual_seed(5)
    vocab = model.config.vocab_size
    prefix = torch.randint(0, vocab, (prefix_tokens,), generator=generator).tolist()
    continuations = [torch.randint(0, vocab, (row_tokens,), generator=generator).tolist() for _ in range(rows)]
    cold = Engine(model, tokenizer, prefix_cache_bytes=0)
    warm = Engine(model, tokenizer)
    warm.score(prefix, continuations, entropy=False)
    cold_s = best_of(repeats, lambda: cold.score(prefix, continuations, entropy=False))
    warm_s = best_of(repeats, lambda: warm.score(prefix, continuations, entropy=False))
    figures = {"prefix_tokens": prefix_tokens, "rows": rows, "row_tokens": row_tokens, "cold_ms": cold_s * 1000,
               "warm_ms": warm_s * 1000, "speedup": cold_s / warm_s,
               "reused_tokens_per_call": warm.prefix_cache.stats.reused_tokens / warm.prefix_cache.stats.hits}
    progress(f"prefix reuse: cold {figures['cold_ms']:.0f} ms, warm {figures['warm_ms']:.0f} ms "
             f"({figures['speedup']:.2f}x)")
    return figures


def llamacpp_files(model: str, state: dict[str, torch.Tensor] | None, folder: Path) -> dict[str, Path]:
    """GGUF files for llama.cpp: the slice written by our writer (F32, BF16, Q8_0; SmolLM2's
    tokenizer padded to the slice's vocabulary), or the default model's own Q4_1 file."""
    from gguf import GGMLQuantizationType

    from engine.gguf_write import write_gguf
    if model == "default":
        return {"llama.cpp Q4_1": default_model_path()}
    tokenizer = default_tokenizer()
    config = from_hf_dict(MELLUM_SLICE)
    files = {}
    for label, qtype in (("F32", GGMLQuantizationType.F32), ("BF16", GGMLQuantizationType.BF16),
                         ("Q8_0", GGMLQuantizationType.Q8_0)):
        files[f"llama.cpp {label}"] = path = folder / f"mellum-slice-{label}.gguf"
        progress(f"writing {path.name}")
        write_gguf(path, config, state, qtype, tokenizer=tokenizer, name="mellum-slice")
    return files


def measure_llamacpp(files: dict[str, Path], ours: dict, vocab: int, threads: int, repeats: int,
                     steps: int) -> dict[str, dict]:
    """Each llama.cpp file in turn (one in memory at a time), alternating with our variants."""
    figures: dict[str, dict[str, float]] = {}
    for name, path in files.items():
        side = LlamaCpp(path, threads, 4096)
        measured = measure({name: side, **ours}, vocab, (512, 2048), repeats, steps)
        figures[name] = measured[name]
        for variant in ours:
            figures.setdefault(f"{variant} (with llama.cpp)", {}).update(
                {k: v for k, v in measured[variant].items()})
        del side
        gc.collect()
    return figures


def llamacpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="no 8192 prefill, no 32K KV, no llama.cpp")
    parser.add_argument("--long", type=int, default=0, metavar="TOKENS",
                        help="only the long-context run: prefill the slice to TOKENS (e.g. 131072)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.long:
        long_context(args.long)
        return
    limits = machine_limits(args.threads)
    raw: dict[str, dict[str, dict[str, float]]] = {}
    extra: dict[str, object] = {"limits": limits}
    folder = Path(tempfile.mkdtemp(prefix="focal-bench-"))
    for label in ("mellum", "default"):
        state = mellum_state() if label == "mellum" else None
        sides = mellum_sides(state) if label == "mellum" else default_sides()
        vocab = MELLUM_SLICE["vocab_size"] if label == "mellum" else sides["ours fp32"].model.config.vocab_size
        progress(f"{label}: measuring {', '.join(sides)}, alternating")
        figures = measure(sides, vocab, (512, 2048), args.repeats, args.decode_steps)
        ours_best = fastest(figures, "ours", "prefill_2048_tok_s")
        theirs_best = fastest(figures, "transformers", "prefill_2048_tok_s")
        config = sides["ours fp32"].model.config
        flops = active_flops_per_token(config, 2048)
        peak = limits["matmul_gflops_bf16" if "fp32" not in ours_best else "matmul_gflops_fp32"] * 1e9
        extra[f"{label}_roofline_fraction_prefill_2048"] = flops * figures[ours_best]["prefill_2048_tok_s"] / peak
        decode_best = fastest(figures, "ours", "decode_ms_per_token", higher=False)
        bytes_read = decode_weight_bytes(sides[decode_best].model)
        extra[f"{label}_bandwidth_fraction_decode"] = (
            bytes_read / (figures[decode_best]["decode_ms_per_token"] / 1000) / (limits["copy_gb_s"] * 1e9))
        extra[f"{label}_decode_weight_bytes"] = {name: decode_weight_bytes(side.model) for name, side in sides.items()
                                                 if name.startswith("ours")}
        if label == "mellum" and not args.quick:
            # Two repeats: the first builds oneDNN's kernels for the new expert-slice shapes, on both sides.
            long = measure({ours_best: sides[ours_best], theirs_best: sides[theirs_best]}, vocab, (8192,), 2, 1)
            for name in long:
                figures[name]["prefill_8192_tok_s"] = long[name]["prefill_8192_tok_s"]
            extra["mellum_kv_32k"] = kv_at(sides["ours bf16"].model, 32768)
            progress(f"kv at 32K: {extra['mellum_kv_32k']}")
        if label == "default":
            extra["default_prefix_reuse"] = prefix_reuse(sides["ours bf16"].model)
        for name in [n for n in sides if n.startswith("transformers") or n == "ours fp32"]:
            del sides[name]
        gc.collect()
        if not args.quick and llamacpp_available():
            files = llamacpp_files(label, state, folder)
            del state  # the slice's fp32 tensors: llama.cpp's files take their place in memory
            gc.collect()
            figures.update(measure_llamacpp(files, sides, vocab, args.threads, args.repeats, args.decode_steps))
            for path in folder.glob("*.gguf"):
                path.unlink()
        raw[label] = figures
        del sides
        gc.collect()
    write("engine", *report(raw, extra, args))


def report(raw: dict, extra: dict, args: argparse.Namespace) -> tuple[dict, str]:
    ratios: dict[str, float] = {}
    rows = []

    def compare(label: str, key: str, peer: str, name: str, higher: bool = True,
                ours_side: str = "ours", figures: dict | None = None, figure: str = "") -> None:
        # Against transformers: only the figures measured beside it (not the llama.cpp phase's).
        figures = figures or {n: v for n, v in raw[label].items() if not n.endswith("(with llama.cpp)")}
        if not any(n.startswith(peer) and key in figures[n] for n in figures):
            return
        ours_name = fastest(figures, ours_side, key, higher)
        theirs_name = fastest(figures, peer, key, higher)
        ours, theirs = figures[ours_name][key], figures[theirs_name][key]
        ratios[name] = ours / theirs if higher else theirs / ours
        unit = "tok/s" if higher else "ms/token"
        figure = figure or key.replace("_tok_s", "").replace("_ms_per_token", "").replace("_", " ")
        rows.append([label, f"{figure} ({unit})",
                     f"{ours:.1f} ({ours_name.removeprefix('ours ')})",
                     f"{theirs:.1f} ({theirs_name.split(' ', 1)[1]})", peer, f"{ratios[name]:.2f}x"])

    for label in raw:
        for length in (512, 2048, 8192):
            compare(label, f"prefill_{length}_tok_s", "transformers", f"{label}_prefill_{length}")
        compare(label, "decode_ms_per_token", "transformers", f"{label}_decode", higher=False)
        with_llama = {n.removesuffix(" (with llama.cpp)"): v for n, v in raw[label].items()
                      if n.endswith("(with llama.cpp)") or n.startswith("llama.cpp")}
        if with_llama:
            for length in (512, 2048):
                compare(label, f"prefill_{length}_tok_s", "llama.cpp", f"llamacpp_{label}_prefill_{length}",
                        figures=with_llama)
            compare(label, "decode_ms_per_token", "llama.cpp", f"llamacpp_{label}_decode", higher=False,
                    figures=with_llama)
        if label == "mellum" and "llama.cpp Q8_0" in with_llama and "ours int8" in with_llama:
            q8 = {k: with_llama[k] for k in ("ours int8", "llama.cpp Q8_0")}
            compare(label, "decode_ms_per_token", "llama.cpp", "llamacpp_mellum_q8_decode", higher=False, figures=q8,
                    figure="decode, int8 vs Q8_0")
    for key in ("roofline_fraction_prefill_2048", "bandwidth_fraction_decode"):
        ratios[key] = extra[f"mellum_{key}"]
        ratios[f"default_{key}"] = extra[f"default_{key}"]
    if "mellum_kv_32k" in extra:
        ratios["kv_bytes_32k_over_formula"] = extra["mellum_kv_32k"]["ratio"]
    limits = extra["limits"]
    lines = [
        f"# Engine speed (CPU, {args.threads} threads, best of {args.repeats}; each side at its fastest variant)",
        "",
        markdown_table(["model", "figure", "ours", "peer", "peer name", "ours/peer speed"], rows),
        "",
        f"Machine, same run: matmul {limits['matmul_gflops_fp32']:.0f} GFLOP/s fp32, "
        f"{limits['matmul_gflops_bf16']:.0f} GFLOP/s bf16; copy {limits['copy_gb_s']:.1f} GB/s.",
        f"Prefill 2048 as a fraction of the matmul limit of its dtype: mellum "
        f"{extra['mellum_roofline_fraction_prefill_2048']:.2f}, default "
        f"{extra['default_roofline_fraction_prefill_2048']:.2f}. Decode as a fraction of the copy bandwidth: "
        f"mellum {extra['mellum_bandwidth_fraction_decode']:.2f}, default "
        f"{extra['default_bandwidth_fraction_decode']:.2f}.",
    ]
    if "default_prefix_reuse" in extra:
        reuse = extra["default_prefix_reuse"]
        ratios["default_prefix_reuse_speedup"] = reuse["speedup"]
        lines.append(f"Prefix cache (default model, bf16): {reuse['rows']} rows of {reuse['row_tokens']} tokens "
                     f"after a shared {reuse['prefix_tokens']}-token prefix: {reuse['cold_ms']:.0f} ms recomputed, "
                     f"{reuse['warm_ms']:.0f} ms with the prefix cached ({reuse['speedup']:.2f}x).")
    if "mellum_kv_32k" in extra:
        kv = extra["mellum_kv_32k"]
        lines.append(f"KV cache of the slice at {kv['tokens']} tokens (bf16): {kv['bytes'] / 2**20:.1f} MiB measured, "
                     f"{kv['formula_bytes'] / 2**20:.1f} MiB by the formula (ratio {kv['ratio']:.3f}); "
                     f"prefill {kv['prefill_tok_s']:.0f} tok/s.")
    payload = {"ratios": ratios, "raw": raw, "extra": extra, "threads": args.threads}
    plot(rows)
    return payload, "\n".join(lines)


def plot(rows: list[list[str]]) -> None:
    """Ours/peer speed per figure, one bar each; the line at 1 is parity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{model} {figure} vs {peer}" for model, figure, _, _, peer, _ in rows]
    values = [float(row[-1].removesuffix("x")) for row in rows]
    figure, axis = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.2))
    axis.barh(labels, values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
    axis.axvline(1.0, color="black", linewidth=1)
    axis.invert_yaxis()
    axis.set_xlabel("ours / peer speed (above 1: we are faster)")
    axis.set_title("Engine speed, each side at its fastest variant (2-core CPU)")
    figure.tight_layout()
    figure.savefig(RESULTS / "engine.png", dpi=120)


if __name__ == "__main__":
    main()
