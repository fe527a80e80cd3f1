"""Engine speed against transformers (and llama.cpp, when installed) on identical weights, in one run.

Models: (a) a real-width Mellum2 slice (hidden 2304, 32/4 heads, 64 experts top-8 of width 896,
vocab 98304; 4 layers: 3 sliding + 1 full, all sparse; random weights), shared tensor-for-tensor
with transformers' ``MellumForCausalLM``; (b) the default model (SmolLM2-135M-Instruct GGUF), read
by each side from the same file.

Each side runs in every dtype it offers here (ours: fp32 and bf16 with weights reordered once, as
the engine runs them on a CPU (fp32 for oneDNN; bf16 for the engine's own kernel where the CPU has
AVX-512 BF16, else for oneDNN), int8 weights with bf16 activations (one-row decode
through the engine's native kernels, ``engine.native``, when built: the report says), int8 under
``torch.compile`` too, and for the default model bf16 (not reordered) under ``torch.compile``;
transformers: fp32, bf16, and for the default model bf16 under ``torch.compile``). The main table
pairs like with like (fp32 with fp32, bf16 with bf16, compiled with compiled, our int8, eager and
compiled, with llama.cpp's Q8_0, compiled C++); a second
table, labelled as such, compares each side's fastest variant (the brackets say which). Sides
alternate inside every repeat and the best repeat counts, so machine noise hits all alike; the
slice's sides are measured in two groups (fp32; bf16 and int8), each with its like-for-like peer,
since all of them at once would not fit in memory. Prefill
computes logits for the last position only; decode is the median step after a 512-token prompt.
Ratios are ours/theirs in speed: above 1 means we are faster.

Also measured in the same run: the machine's matmul FLOP/s and copy bandwidth (fp32, bf16), our
prefill at 2048 as a fraction of the FLOP/s limit (active FLOPs per token x tokens/s) and our
decode as a fraction of the bandwidth limit (weight bytes read per token / time per token), and
the KV cache's bytes at 32K tokens of the slice against (full layers x n + sliding layers x
window) x per-token size. llama.cpp (``llama-cpp-python``, 2 threads) runs the same weights as
GGUF: the slice in F32, BF16 and Q8_0, the default model's own Q4_1 file. And the prefix cache:
scoring after a shared 1024-token prefix, recomputed against cached. The ratios are plotted in
``bench/results/engine.png``. Speculative decoding (``bench.engine.speculative``): the default
model's greedy decode on digest-shaped prompts with and without the prompt-lookup drafter (fp32,
eager), its acceptance rate and mean accepted draft length.

    python -m bench.engine [--threads 2] [--repeats 3] [--decode-steps 16] [--quick]
    python -m bench.engine --report-only    # re-render the report from bench/results/engine.json's figures
    python -m bench.engine --long 131072     # only: prefill the slice to 128K, KV bytes on the way
    python -m bench.engine --speculative     # only: speculative decoding, merged into results/engine.json
    python -m bench.engine --agreement       # only: llama.cpp's same-model check, merged likewise
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
from pathlib import Path

import torch

from bench.engine.kv import LONG_EVERY, kv_at, long_context
from bench.engine.limits import active_flops_per_token, cpu_has_amx, decode_weight_bytes, machine_limits
from bench.engine.llamacpp import llamacpp_available, llamacpp_files, measure_llamacpp, same_model_check
from bench.engine.models import (
    MELLUM_SLICE,
    OURS_BF16,
    OURS_FP32,
    default_sides,
    mellum_groups,
    mellum_state,
    ours_fp32_taking,
)
from bench.engine.prefix import prefix_reuse
from bench.engine.report import report
from bench.engine.speculative import speculative_figures
from bench.engine.variants import Variant, fastest, measure
from bench.report import RESULTS, progress, provenance, write
from engine import Engine, default_model_path, native
from engine.config import from_hf_dict
from engine.loader import build_model, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="no 8192 prefill, no 32K KV, no llama.cpp")
    parser.add_argument("--long", type=int, default=0, metavar="TOKENS",
                        help="only the long-context run: prefill the slice to TOKENS (e.g. 131072)")
    parser.add_argument("--speculative", action="store_true",
                        help="only speculative decoding: measured now, merged into results/engine.json's figures")
    parser.add_argument("--agreement", action="store_true",
                        help="only llama.cpp's same-model check on both models, merged into results/engine.json")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rebuild the report and plot from the figures in results/engine.json")
    args = parser.parse_args()
    if args.report_only:
        rerender(args)
        return
    torch.set_num_threads(args.threads)
    if args.long:
        long_context(args.long)
        return
    if args.speculative:
        speculative_only(args)
        return
    if args.agreement:
        agreement_only(args)
        return
    limits = machine_limits(args.threads)
    raw: dict[str, dict[str, dict[str, float]]] = {}
    extra: dict[str, object] = {"limits": limits, "cpu_has_amx": cpu_has_amx(), "int8_kernels": native.status()}
    folder = Path(tempfile.mkdtemp(prefix="focal-bench-"))
    for label in ("mellum", "default"):
        state = mellum_state() if label == "mellum" else None
        groups = mellum_groups(state) if label == "mellum" else [default_sides]
        figures: dict[Variant, dict[str, float]] = {}
        weight_bytes: dict[Variant, float] = {}
        kept: dict[Variant, object] = {}  # our sides, measured again beside llama.cpp
        while groups:
            sides = groups.pop(0)()
            config = next(side.model.config for v, side in sides.items() if v.side == "ours")
            vocab = config.vocab_size
            progress(f"{label}: measuring {', '.join(v.label for v in sides)}, alternating")
            figures.update(measure(sides, vocab, (512, 2048), args.repeats, args.decode_steps))
            weight_bytes.update({v: decode_weight_bytes(side.model) for v, side in sides.items() if v.side == "ours"})
            if label == "mellum" and OURS_BF16 in sides and not args.quick:
                # Two repeats: the first builds oneDNN's kernels for the new expert-slice shapes, on both sides.
                pair = (OURS_BF16, Variant("transformers", "bf16"))
                long = measure({v: sides[v] for v in pair}, vocab, (8192,), 2, 1)
                for name in long:
                    figures[name]["prefill_8192_tok_s"] = long[name]["prefill_8192_tok_s"]
                extra["mellum_kv_32k"] = kv_at(sides[OURS_BF16].model, 32768, every=LONG_EVERY)
                progress(f"kv at 32K: {extra['mellum_kv_32k']}")
            if label == "default":
                extra["default_prefix_reuse"] = prefix_reuse(sides[OURS_BF16].model)
                extra["speculative"] = measure_speculative()
            # The slice's fp32 side is built again for llama.cpp, after the others (memory).
            kept.update({v: side for v, side in sides.items()
                         if v.side == "ours" and not (label == "mellum" and v == OURS_FP32)})
            del sides
            gc.collect()
        del groups
        ours_best = fastest(figures, "ours", "prefill_2048_tok_s")
        flops = active_flops_per_token(config, 2048)
        peak = limits[f"matmul_gflops_{'fp32' if ours_best.precision == 'fp32' else 'bf16'}"] * 1e9
        extra[f"{label}_roofline_fraction_prefill_2048"] = flops * figures[ours_best]["prefill_2048_tok_s"] / peak
        decode_best = fastest(figures, "ours", "decode_ms_per_token", higher=False)
        extra[f"{label}_bandwidth_fraction_decode"] = (
            weight_bytes[decode_best] / (figures[decode_best]["decode_ms_per_token"] / 1000)
            / (limits["copy_gb_s"] * 1e9))
        extra[f"{label}_decode_weight_bytes"] = {v.label: b for v, b in weight_bytes.items()}
        if not args.quick and llamacpp_available():
            files = llamacpp_files(label, state, folder)
            if label == "mellum":
                kept = {OURS_FP32: ours_fp32_taking(state), **kept}
            del state  # the slice's fp32 tensors: llama.cpp's files take their place in memory
            gc.collect()
            check = extra[f"{label}_llamacpp_agreement"] = same_model_check(files, kept[OURS_FP32].model,
                                                                            args.threads)
            if check["agrees"]:
                figures.update(measure_llamacpp(files, kept, vocab, args.threads, args.repeats, args.decode_steps))
            else:
                progress(f"llama.cpp computes another model from {label}'s file: not timed")
            for path in folder.glob("*.gguf"):
                path.unlink()
        raw[label] = figures
        del kept
        gc.collect()
    extra["provenance"] = provenance({"threads": args.threads, "repeats": args.repeats,
                                      "decode_steps": args.decode_steps, "quick": args.quick})
    write("engine", *report(raw, extra, args))


def measure_speculative() -> dict:
    figures = speculative_figures(Engine.load())
    figures["provenance"] = provenance({"model": "default", "dtype": "fp32", "compiled": False})
    return figures


def speculative_only(args: argparse.Namespace) -> None:
    """Speculative decoding measured now; the other figures of results/engine.json kept as they were
    (the report says when each was measured)."""
    stored = json.loads((RESULTS / "engine.json").read_text())
    stored["extra"]["speculative"] = measure_speculative()
    (RESULTS / "engine.json").write_text(json.dumps(stored, indent=2))
    rerender(args, again="only speculative decoding was measured again (its section says when)")


def agreement_only(args: argparse.Namespace) -> None:
    """llama.cpp's same-model check on the slice and the default model, measured now; the stored
    timings are kept (the report says when each was measured)."""
    if not llamacpp_available():
        raise SystemExit("llama-cpp-python is not installed: FOCAL_EXTRAS=bench bash scripts/setup.sh")
    stored = json.loads((RESULTS / "engine.json").read_text())
    folder = Path(tempfile.mkdtemp(prefix="focal-bench-"))
    for label in ("mellum", "default"):
        state = mellum_state() if label == "mellum" else None
        model = (build_model(from_hf_dict(MELLUM_SLICE), state, torch.float32) if state is not None
                 else load_model(default_model_path(), torch.float32))
        files = llamacpp_files(label, state, folder, kinds=("F32",))
        check = same_model_check(files, model, args.threads)
        check["provenance"] = provenance({"threads": args.threads})
        stored["extra"][f"{label}_llamacpp_agreement"] = check
        del model, state
        for path in folder.glob("*.gguf"):
            path.unlink()
        gc.collect()
    stored["extra"]["cpu_has_amx"] = cpu_has_amx()
    (RESULTS / "engine.json").write_text(json.dumps(stored, indent=2))
    rerender(args, again="only llama.cpp's same-model check was run again (its lines say when)")


def rerender(args: argparse.Namespace, again: str = "nothing was measured again") -> None:
    """The report of the stored figures, under the stored run's settings; the report says it was re-rendered."""
    stored = json.loads((RESULTS / "engine.json").read_text())
    raw = {label: {Variant.parse(name): figures for name, figures in by_name.items()}
           for label, by_name in stored["raw"].items()}
    extra = stored["extra"]
    args.threads, args.repeats = stored.get("threads", args.threads), stored.get("repeats", args.repeats)
    payload, markdown = report(raw, extra, args)
    when = extra.get("provenance", {}).get("commit", "an earlier commit (the run predates provenance records)")
    note = f"Re-rendered from the figures measured at {when}; {again}."
    measured = extra.get("speculative", {}).get("provenance")
    if measured:
        note += f" Speculative decoding was measured at {measured['commit']} on {measured['date']}."
    note += "\n"
    title, _, rest = markdown.partition("\n")
    write("engine", payload, f"{title}\n\n{note}{rest}")


if __name__ == "__main__":
    main()
