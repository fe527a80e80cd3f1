"""The engine report: like for like first (the same precision, compile state and model on both
sides), then each side's fastest variant, labelled as such; the machine's limits; the plot.

llama.cpp is built without AMX (scripts/setup.sh says why), while our bf16 matmuls use it
where the CPU has it: every llama.cpp figure says which was the case in the run (on a CPU without
AMX neither side uses it). llama.cpp is timed only on a model whose same-model check passed
(``bench.engine.agreement``); the report gives the check's figures.
"""

from __future__ import annotations

import argparse

from bench.engine.variants import Variant, fastest
from bench.report import RESULTS, markdown_table

# (our variant, the peer's variant of the same precision class), by peer.
LIKE_PAIRS = {
    "transformers": [(Variant("ours", "fp32"), Variant("transformers", "fp32")),
                     (Variant("ours", "bf16"), Variant("transformers", "bf16")),
                     (Variant("ours", "bf16", True), Variant("transformers", "bf16", True))],
    "llama.cpp": [(Variant("ours", "fp32"), Variant("llama.cpp", "F32")),
                  (Variant("ours", "bf16"), Variant("llama.cpp", "BF16")),
                  (Variant("ours", "int8"), Variant("llama.cpp", "Q8_0")),
                  (Variant("ours", "int8", True), Variant("llama.cpp", "Q8_0"))],
}
FIGURES = [(f"prefill_{n}_tok_s", f"prefill_{n}", True) for n in (512, 2048, 8192)] + [
    ("decode_ms_per_token", "decode", False)]


def amx_note(extra: dict) -> str:
    """What the run's CPU meant for llama.cpp's figures (runs before the flag was stored: the build's note)."""
    if extra.get("cpu_has_amx") is False:
        return "no AMX on this CPU: neither side uses it"
    return "llama.cpp built without AMX, ours uses it"


def phase(figures: dict[Variant, dict[str, float]], peer: str) -> dict[Variant, dict[str, float]]:
    """The figures measured in ``peer``'s phase: against llama.cpp, ours measured beside it (without the
    ``beside`` mark); against transformers, the first phase's."""
    if peer == "llama.cpp":
        return {Variant(v.side, v.precision, v.compiled): f for v, f in figures.items()
                if v.beside == peer or v.side == peer}
    return {v: f for v, f in figures.items() if not v.beside}


def like_for_like(raw: dict, note: str) -> tuple[dict[str, dict[str, float]], list[list[str]]]:
    """Ratios (ours/peer speed) of same-precision pairs only: {ratio key: {pair: ratio}}, and table rows."""
    ratios: dict[str, dict[str, float]] = {}
    rows = []
    for label, figures in raw.items():
        for peer, pairs in LIKE_PAIRS.items():
            measured = phase(figures, peer)
            for key, name, higher in FIGURES:
                for ours, theirs in pairs:
                    if key not in measured.get(ours, {}) or key not in measured.get(theirs, {}):
                        continue
                    mine, other = measured[ours][key], measured[theirs][key]
                    ratio = mine / other if higher else other / mine
                    prefix = "llamacpp_" if peer == "llama.cpp" else ""
                    ratios.setdefault(f"{prefix}{label}_{name}", {})[f"{ours.short} vs {theirs.short}"] = ratio
                    unit = "tok/s" if higher else "ms/token"
                    rows.append([label, f"{name.replace('_', ' ')} ({unit})", ours.short, f"{mine:.1f}",
                                 f"{peer} {theirs.short}" + (f" ({note})" if peer == "llama.cpp" else ""),
                                 f"{other:.1f}", f"{ratio:.2f}x"])
    return ratios, rows


def report(raw: dict, extra: dict, args: argparse.Namespace) -> tuple[dict, str]:
    ratios: dict[str, float] = {}
    rows = []
    note = amx_note(extra)
    like, like_rows = like_for_like(raw, note)

    def compare(label: str, key: str, peer: str, name: str, higher: bool = True,
                ours_side: str = "ours", figures: dict | None = None, figure: str = "") -> None:
        # Against transformers: only the figures measured beside it (not the llama.cpp phase's).
        figures = figures or phase(raw[label], "transformers")
        if not any(v.side == peer and key in figures[v] for v in figures):
            return
        ours_name = fastest(figures, ours_side, key, higher)
        theirs_name = fastest(figures, peer, key, higher)
        ours, theirs = figures[ours_name][key], figures[theirs_name][key]
        ratios[name] = ours / theirs if higher else theirs / ours
        unit = "tok/s" if higher else "ms/token"
        figure = figure or key.replace("_tok_s", "").replace("_ms_per_token", "").replace("_", " ")
        rows.append([label, f"{figure} ({unit})",
                     f"{ours:.1f} ({ours_name.short})", f"{theirs:.1f} ({theirs_name.short})",
                     peer + (f" ({note})" if peer == "llama.cpp" else ""), f"{ratios[name]:.2f}x"])

    for label in raw:
        for length in (512, 2048, 8192):
            compare(label, f"prefill_{length}_tok_s", "transformers", f"{label}_prefill_{length}")
        compare(label, "decode_ms_per_token", "transformers", f"{label}_decode", higher=False)
        with_llama = phase(raw[label], "llama.cpp")
        if with_llama:
            for length in (512, 2048):
                compare(label, f"prefill_{length}_tok_s", "llama.cpp", f"llamacpp_{label}_prefill_{length}",
                        figures=with_llama)
            compare(label, "decode_ms_per_token", "llama.cpp", f"llamacpp_{label}_decode", higher=False,
                    figures=with_llama)
        int8, q8_0 = Variant("ours", "int8"), Variant("llama.cpp", "Q8_0")
        if label == "mellum" and q8_0 in with_llama and int8 in with_llama:
            q8 = {k: with_llama[k] for k in (int8, Variant("ours", "int8", True), q8_0) if k in with_llama}
            compare(label, "decode_ms_per_token", "llama.cpp", "llamacpp_mellum_q8_decode", higher=False, figures=q8,
                    figure="decode, int8 vs Q8_0")
    for key in ("roofline_fraction_prefill_2048", "bandwidth_fraction_decode"):
        ratios[key] = extra[f"mellum_{key}"]
        ratios[f"default_{key}"] = extra[f"default_{key}"]
    if "mellum_kv_32k" in extra:
        ratios["kv_bytes_32k_over_formula"] = extra["mellum_kv_32k"]["ratio"]
        if "worst_ratio" in extra["mellum_kv_32k"]:
            ratios["kv_bytes_over_formula_worst"] = extra["mellum_kv_32k"]["worst_ratio"]
    limits = extra["limits"]
    lines = [
        f"# Engine speed (CPU, {args.threads} threads, best of {args.repeats})",
        "",
        "## Like for like: the same precision and compile state on both sides",
        "",
        markdown_table(["model", "figure", "ours", "ours figure", "peer", "peer figure", "ours/peer speed"],
                       like_rows),
        "",
        "## Each side at its fastest variant (not like for like: the variants differ, see the brackets)",
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
    if "int8_kernels" in extra:
        lines.append(f"Our decode steps ran on the engine's C kernels, {extra['int8_kernels']}: attention over the "
                     f"KV cache in every dtype (engine/decode_attention.c; runs before it were measured with two "
                     f"PyTorch matmuls), int8 matmuls (engine/int8_kernels.c): activations rounded to int16 with one "
                     f"scale per row, weights int8 with one scale per output row (llama.cpp's Q8_0: activations to "
                     f"int8 per block of 32, weights int8 per block of 32).")
        if "BF16" in extra["int8_kernels"]:
            lines.append("Our bf16 matmuls, prefill and decode, ran on the engine's own AVX-512 BF16 kernel "
                         "(engine/bf16_matmul.c, weights in its tile layout); fp32 ran through oneDNN with weights "
                         "reordered once.")
    lines += agreement_lines(raw, extra)
    if "default_prefix_reuse" in extra:
        reuse = extra["default_prefix_reuse"]
        ratios["default_prefix_reuse_speedup"] = reuse["speedup"]
        lines.append(f"Prefix cache (default model, bf16): {reuse['rows']} rows of {reuse['row_tokens']} tokens "
                     f"after a shared {reuse['prefix_tokens']}-token prefix: {reuse['cold_ms']:.0f} ms recomputed, "
                     f"{reuse['warm_ms']:.0f} ms with the prefix cached ({reuse['speedup']:.2f}x).")
    if "mellum_kv_32k" in extra:
        kv = extra["mellum_kv_32k"]
        worst = (f"; worst on the way (every {kv['on_the_way'][0]['tokens']} tokens) {kv['worst_ratio']:.3f}"
                 if kv.get("on_the_way") else "; not sampled on the way (a run before the growth change)")
        lines.append(f"KV cache of the slice at {kv['tokens']} tokens (bf16): {kv['bytes'] / 2**20:.1f} MiB measured, "
                     f"{kv['formula_bytes'] / 2**20:.1f} MiB by the formula (ratio {kv['ratio']:.3f}{worst}); "
                     f"prefill {kv['prefill_tok_s']:.0f} tok/s.")
    if "speculative" in extra:
        lookup = extra["speculative"]["prompt_lookup"]
        ratios["default_speculative_prompt_lookup_speedup"] = lookup["speedup"]
        when = extra["speculative"].get("provenance", {}).get("commit", "the same run")
        lines += ["", "## Speculative decoding (default model, fp32, eager, greedy)", "",
                  f"{lookup['prompts']} digest-shaped prompts (instruction, three numbered evidence chunks, question; "
                  f"dev questions 51 onwards), {lookup['new_tokens']} new tokens each, outputs identical token for "
                  f"token; the time includes each prompt's prefill, the same on both sides. Measured at {when}.", "",
                  markdown_table(["drafter", "tok/s plain", "tok/s speculative", "speedup", "acceptance",
                                  "mean accepted per step"],
                                 [["prompt lookup", f"{lookup['plain_tok_s']:.1f}", f"{lookup['tok_s']:.1f}",
                                   f"{lookup['speedup']:.2f}x", f"{lookup['acceptance']:.2f}",
                                   f"{lookup['mean_accepted']:.2f}"]]),
                  "", "MTP drafting: not measured (the default model has no multi-token-prediction head)."]
    raw_by_label = {model: {v.label: f for v, f in figures.items()} for model, figures in raw.items()}
    payload = {"ratios": ratios, "like_for_like": like, "raw": raw_by_label, "extra": extra,
               "threads": args.threads, "repeats": args.repeats,
               "speculative": {k: v for k, v in extra.get("speculative", {}).items() if k != "provenance"}}
    plot(like_rows)
    return payload, "\n".join(lines)


def agreement_lines(raw: dict, extra: dict) -> list[str]:
    """The same-model check of each model llama.cpp ran (or was refused)."""
    lines = []
    for label in raw:
        check = extra.get(f"{label}_llamacpp_agreement")
        if check is None:
            if any(v.side == "llama.cpp" for v in raw[label]):
                lines.append(f"llama.cpp same-model check, {label}: not run (figures from before the check existed).")
            continue
        window = f", {check['positions'] - check['window']} past the window of {check['window']}" \
            if check["window"] else ""
        verdict = "passed: timed" if check["agrees"] else "FAILED: llama.cpp was not timed on this model"
        past = f" (past the window {check['top1_agreement_past_window']:.3f})" if check["window"] else ""
        lines.append(f"llama.cpp same-model check, {label} ({check['file']} file against our fp32 on the same "
                     f"weights, {check['positions']} positions{window}): top-1 agreement {check['top1_agreement']:.3f}"
                     f"{past}, largest logit difference "
                     f"{check['max_abs_logit_diff']:.3g} (largest logit {check['max_abs_logit']:.3g}); required "
                     f"{check['required_top1']:.2f}: {verdict}.")
    return lines


def plot(rows: list[list[str]]) -> None:
    """Like-for-like ours/peer speed per figure, one bar each; the line at 1 is parity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{model} {figure}: ours {ours} vs {peer.partition(' (')[0]}"
              for model, figure, ours, _, peer, _, _ in rows]
    values = [float(row[-1].removesuffix("x")) for row in rows]
    figure, axis = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.2))
    axis.barh(labels, values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
    axis.axvline(1.0, color="black", linewidth=1)
    axis.invert_yaxis()
    axis.set_xlabel("ours / peer speed (above 1: we are faster)")
    figure.suptitle("Engine speed, like for like (same precision and compile state)")
    figure.tight_layout()
    figure.savefig(RESULTS / "engine.png", dpi=120)
