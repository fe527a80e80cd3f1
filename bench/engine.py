"""Engine speed against transformers on identical weights, measured in one run.

(a) a real-width Mellum2 slice (hidden 2304, 32/4 heads, 64 experts top-8 of width 896, vocab
98304; 4 layers: 3 sliding + 1 full, all sparse; random weights), shared tensor-for-tensor between
our engine and transformers' ``MellumForCausalLM``; (b) the default model (SmolLM2-135M-Instruct
GGUF) read by each side from the same file. Both sides run fp32 on the CPU with the same thread
count, compute logits only for the last prefill position, and decode one token per step after a
512-token prompt (median step). The two sides alternate within every repeat and the best
repeat counts, so machine noise hits both alike. Ratios are ours/theirs in speed: above 1 means we are faster.

    python -m bench.engine [--threads 2] [--repeats 3] [--decode-steps 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.report import best_of, markdown_table, progress, write
from engine import default_model_path
from engine.config import from_hf_dict
from engine.loader import build_model, load_model
from engine.model import CausalLM

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
    def __init__(self, model: CausalLM, chunk: int = 2048) -> None:
        self.model, self.chunk = model, chunk

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor):
        cache = self.model.new_cache(1)
        cache.reserve(ids.shape[1] + 64)
        hidden = None
        for start in range(0, ids.shape[1], self.chunk):
            hidden = self.model(ids[:, start : start + self.chunk], cache)
        return self.model.logits(hidden[:, -1:]), cache

    @torch.inference_mode()
    def step(self, token: torch.Tensor, cache) -> torch.Tensor:
        return self.model.logits(self.model(token, cache))


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


def mellum_pair():
    from transformers import MellumConfig, MellumForCausalLM

    progress("building the real-width Mellum2 slice (random weights, ~8.5 GB fp32)")
    torch.manual_seed(0)
    with torch.device("meta"):
        theirs = MellumForCausalLM(MellumConfig(**MELLUM_SLICE))
    state = {}
    for name, param in theirs.named_parameters():
        if "norm" in name:
            state[name] = 1.0 + 0.1 * torch.randn(param.shape)
        else:
            state[name] = torch.randn(param.shape) * (0.5 / param.shape[-1] ** 0.5)
    theirs.load_state_dict(state, assign=True, strict=False)
    theirs.model.rotary_emb = type(theirs.model.rotary_emb)(theirs.config)  # real tables, not meta
    theirs.eval()
    ours = build_model(from_hf_dict(MELLUM_SLICE), state, torch.float32)  # the same tensors
    return Ours(ours), Theirs(theirs), MELLUM_SLICE["vocab_size"]


def default_pair():
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    progress(f"loading the default model from {path.name} on both sides")
    theirs = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ours = load_model(path)
    return Ours(ours), Theirs(theirs), ours.config.vocab_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-steps", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    raw: dict[str, dict[str, dict[str, float]]] = {}
    for label, make in (("mellum", mellum_pair), ("default", default_pair)):
        ours, theirs, vocab = make()
        progress(f"{label}: measuring ours and transformers, alternating")
        raw[label] = measure({"ours": ours, "transformers": theirs}, vocab, (512, 2048),
                             args.repeats, args.decode_steps)
        del ours, theirs
    ratios = {}
    rows = []
    for label in raw:
        ours, theirs = raw[label]["ours"], raw[label]["transformers"]
        for length in (512, 2048):
            key = f"prefill_{length}_tok_s"
            ratios[f"{label}_prefill_{length}"] = ours[key] / theirs[key]
            rows.append([label, f"prefill {length} (tok/s)", f"{ours[key]:.1f}", f"{theirs[key]:.1f}",
                         f"{ratios[f'{label}_prefill_{length}']:.2f}x"])
        key = "decode_ms_per_token"
        ratios[f"{label}_decode"] = theirs[key] / ours[key]
        rows.append([label, "decode (ms/token)", f"{ours[key]:.1f}", f"{theirs[key]:.1f}",
                     f"{ratios[f'{label}_decode']:.2f}x"])
    table = markdown_table(["model", "figure", "ours", "transformers", "ours/theirs speed"], rows)
    markdown = (f"# Engine vs transformers (fp32, CPU, {args.threads} threads, best of {args.repeats})\n\n"
                f"{table}\n")
    write("engine", {"ratios": ratios, "raw": raw, "threads": args.threads, "dtype": "float32"}, markdown)


if __name__ == "__main__":
    main()
