"""The engine report: each figure against its peer, the machine's limits, the plot."""

from __future__ import annotations

import argparse

from bench.engine.variants import Variant, fastest
from bench.report import RESULTS, markdown_table


def report(raw: dict, extra: dict, args: argparse.Namespace) -> tuple[dict, str]:
    ratios: dict[str, float] = {}
    rows = []

    def compare(label: str, key: str, peer: str, name: str, higher: bool = True,
                ours_side: str = "ours", figures: dict | None = None, figure: str = "") -> None:
        # Against transformers: only the figures measured beside it (not the llama.cpp phase's).
        figures = figures or {v: f for v, f in raw[label].items() if not v.beside}
        if not any(v.side == peer and key in figures[v] for v in figures):
            return
        ours_name = fastest(figures, ours_side, key, higher)
        theirs_name = fastest(figures, peer, key, higher)
        ours, theirs = figures[ours_name][key], figures[theirs_name][key]
        ratios[name] = ours / theirs if higher else theirs / ours
        unit = "tok/s" if higher else "ms/token"
        figure = figure or key.replace("_tok_s", "").replace("_ms_per_token", "").replace("_", " ")
        rows.append([label, f"{figure} ({unit})",
                     f"{ours:.1f} ({ours_name.short})", f"{theirs:.1f} ({theirs_name.short})", peer,
                     f"{ratios[name]:.2f}x"])

    for label in raw:
        for length in (512, 2048, 8192):
            compare(label, f"prefill_{length}_tok_s", "transformers", f"{label}_prefill_{length}")
        compare(label, "decode_ms_per_token", "transformers", f"{label}_decode", higher=False)
        with_llama = {Variant(v.side, v.precision, v.compiled): f for v, f in raw[label].items()
                      if v.beside == "llama.cpp" or v.side == "llama.cpp"}
        if with_llama:
            for length in (512, 2048):
                compare(label, f"prefill_{length}_tok_s", "llama.cpp", f"llamacpp_{label}_prefill_{length}",
                        figures=with_llama)
            compare(label, "decode_ms_per_token", "llama.cpp", f"llamacpp_{label}_decode", higher=False,
                    figures=with_llama)
        int8, q8_0 = Variant("ours", "int8"), Variant("llama.cpp", "Q8_0")
        if label == "mellum" and q8_0 in with_llama and int8 in with_llama:
            q8 = {k: with_llama[k] for k in (int8, q8_0)}
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
    raw_by_label = {model: {v.label: f for v, f in figures.items()} for model, figures in raw.items()}
    payload = {"ratios": ratios, "raw": raw_by_label, "extra": extra, "threads": args.threads}
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
