"""The decoder: Mellum2 (transformers' ``MellumForCausalLM``) and its dense relatives.

Differences from the reference implementation, none of which changes the numbers:
- attention masks come from absolute key positions (see ``engine.cache``), so a sliding layer
  never attends over more than its ring plus the new tokens;
- experts run on tokens sorted by expert, one matmul per active expert on a contiguous slice,
  instead of a one-hot mask per expert;
- q/k/v and the dense gate/up projections are fused matmuls;
- Llama and Qwen3 layouts are the same module with q/k norm off or all layers full and dense.

Parameter names are the Hugging Face ones except two fusions, q/k/v -> ``qkv_proj`` and dense
gate/up -> ``gate_up_proj`` (fewer, larger matmuls); ``engine.weights`` converts both ways.
Shape letters: B batch, T new tokens, S attended keys, H heads, D head dim, E experts, K top-k.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from engine import native
from engine.cache import KVCache, LayerKV, RingKV
from engine.config import SLIDING, SPARSE, ModelConfig
from engine.rope import RotaryEmbedding, apply_rotary


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


@dataclass(frozen=True)
class ForwardOptions:
    """How the forward is cut up; the result is the same whatever the values (tests vary them)."""

    query_block: int = 256  # queries per attention block in a long run (see ``attend``)
    # Up to this many token rows (decode), experts run row by row instead of through the sorted
    # path: faster at one row on the real-width slice, even at two, slower beyond.
    decode_rows: int = 1


def attend_one(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One query per row (decode) on the CPU, as two small matmuls per key/value head group: SDPA's
    CPU kernel tiles for many queries and spends most of a decode step's attention time on one.
    Scores and softmax in fp32 whatever the dtype (as SDPA accumulates). Where the engine's C
    kernels are built, one call of ``native.decode_attention`` does it all in fp32 instead."""
    if q.dtype == keys.dtype == values.dtype and native.usable(q):
        return native.decode_attention(q, keys, values, mask)
    batch, heads, _, dim = q.shape
    kv_heads = keys.shape[1]
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, keys.transpose(-1, -2)).float() * dim**-0.5 + mask.float()
    weights = torch.softmax(scores, dim=-1).to(values.dtype)
    return torch.matmul(weights, values).reshape(batch, heads, 1, dim)


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
           window: int | None, query_block: int) -> torch.Tensor:
    """Causal attention of q [B, H, T, D] over keys/values [B, Hkv, S, D] whose last T are q's own.

    ``mask`` None means plain causal with T == S (SDPA's own causal kernel skips the upper
    triangle). Otherwise ``mask`` [T, S] is additive; long query runs are cut into blocks that
    each stop at their last own key and, in a sliding layer, start at the first key inside the
    window of their first query, so work outside the band is skipped. (Keys before the last T are
    all older than the new ones, whatever their order in a ring.)
    """
    if mask is None:
        return F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=True)
    new, total = q.shape[2], keys.shape[2]
    if new == 1 and q.device.type == "cpu":
        return attend_one(q, keys, values, mask)
    if new <= query_block:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
    blocks = []
    for start in range(0, new, query_block):
        end = min(start + query_block, new)
        last = total - new + end
        first = 0 if window is None or start < window - 1 else total - new + start - window + 1
        blocks.append(F.scaled_dot_product_attention(
            q[:, :, start:end], keys[:, :, first:last], values[:, :, first:last],
            attn_mask=mask[start:end, first:last], enable_gqa=True))
    return torch.cat(blocks, dim=2)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, window: int | None, query_block: int) -> None:
        super().__init__()
        self.window = window
        self.query_block = query_block
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        # q, k and v projections fused into one matmul (split back in ``engine.weights``).
        self.qkv_proj = nn.Linear(config.hidden_size, (self.heads + 2 * self.kv_heads) * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        kv: LayerKV,
    ) -> torch.Tensor:
        batch, new, _ = x.shape
        q, k, v = self.qkv_proj(x).split(
            (self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim), dim=-1)
        q = q.view(batch, new, self.heads, self.head_dim)
        k = k.view(batch, new, self.kv_heads, self.head_dim)
        v = v.reshape(batch, new, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope
        q = apply_rotary(q.transpose(1, 2), cos, sin)  # [B, H, T, D]
        k = apply_rotary(k.transpose(1, 2), cos, sin)
        keys, values = kv.update(k, v)
        out = attend(q, keys, values, mask, self.window, self.query_block)
        return self.o_proj(out.transpose(1, 2).reshape(batch, new, -1))


class DenseMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=False)  # gate and up fused
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Router(nn.Module):
    """Softmax over experts, top-k, optional renormalisation of the k weights."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(config.num_experts, config.hidden_size))
        self.top_k = config.num_experts_per_tok
        self.normalize = config.norm_topk_prob

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Each row's score for every expert, in x's dtype."""
        return F.linear(x, self.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = F.softmax(self.scores(x), dim=-1, dtype=torch.float32)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)  # [N, K]
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(x.dtype), experts


class Experts(nn.Module):
    """All experts' SwiGLU weights as 3-D tensors (transformers' fused layout)."""

    def __init__(self, config: ModelConfig, decode_rows: int) -> None:
        super().__init__()
        self.decode_rows = decode_rows
        e, i, h = config.num_experts, config.moe_intermediate_size, config.hidden_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, h))
        self.down_proj = nn.Parameter(torch.empty(e, h, i))

    @property
    def num_experts(self) -> int:
        return self.gate_up_proj.shape[0]

    def expert(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """One expert's SwiGLU on the rows of ``x`` routed to it."""
        gate, up = F.linear(x, self.gate_up_proj[index]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj[index])

    def forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """x [N, H]; weights, experts [N, K] -> [N, H]: row by row up to ``decode_rows`` rows, else sorted."""
        if x.shape[0] <= self.decode_rows:
            return self.row_by_row(x, weights, experts)
        return self.sorted_by_expert(x, weights, experts)

    def sorted_by_expert(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Rows are sorted by expert once, so every active expert runs one matmul over a contiguous
        slice (no per-expert masks)."""
        top_k = experts.shape[1]
        flat = experts.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        token_of = order // top_k
        sorted_x = x.index_select(0, token_of)
        out = torch.empty_like(sorted_x)
        start = 0
        for index, count in enumerate(counts):
            if count:
                out[start:start + count] = self.expert(sorted_x[start:start + count], index)
                start += count
        out = out * weights.reshape(-1)[order].unsqueeze(-1)
        return torch.zeros_like(x).index_add_(0, token_of, out)

    def row_by_row(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Decode: each row's experts applied in place, no sort, gather or scatter. The experts'
        weights are read where they lie: gathering them into a batched matmul copies 8 experts'
        weights per token, several times slower on the CPU than reading them in place."""
        out = torch.zeros_like(x)
        for row, chosen in enumerate(experts.tolist()):
            for k, index in enumerate(chosen):
                out[row] += weights[row, k] * self.expert(x[row : row + 1], index)[0]
        return out


@dataclass
class RoutingStats:
    """Tokens routed to each expert, per sparse layer, since the last reset."""

    counts: dict[int, torch.Tensor] = field(default_factory=dict)

    def add(self, layer: int, experts: torch.Tensor, num_experts: int) -> None:
        hits = torch.bincount(experts.reshape(-1), minlength=num_experts).cpu()
        self.counts[layer] = self.counts.get(layer, torch.zeros_like(hits)) + hits

    def reset(self) -> None:
        self.counts.clear()


class SparseMoe(nn.Module):
    def __init__(self, config: ModelConfig, decode_rows: int) -> None:
        super().__init__()
        self.gate = Router(config)
        self.experts = Experts(config, decode_rows)
        self.stats: RoutingStats | None = None
        self.layer = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, experts = self.gate(flat)
        if self.stats is not None:
            self.stats.add(self.layer, experts, self.experts.num_experts)
        return self.experts(flat, weights, experts).reshape(shape)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, index: int, options: ForwardOptions) -> None:
        super().__init__()
        self.attention_type = config.layer_types[index]
        window = config.sliding_window if self.attention_type == SLIDING else None
        self.self_attn = Attention(config, window, options.query_block)
        if config.mlp_layer_types[index] == SPARSE:
            self.mlp: nn.Module = SparseMoe(config, options.decode_rows)
            self.mlp.layer = index
        else:
            self.mlp = DenseMLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, rope, mask, kv: LayerKV) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    def __init__(self, config: ModelConfig, options: ForwardOptions) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i, options) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    """Decoder plus lm_head. ``forward`` returns final hidden states; ``logits`` projects them."""

    def __init__(self, config: ModelConfig, options: ForwardOptions | None = None) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderModel(config, options or ForwardOptions())
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        with torch.device("cpu"):  # real tables even when the weights are built on the meta device
            self.rotary = nn.ModuleDict(
                {kind: RotaryEmbedding(config.rope[kind], config.head_dim) for kind in set(config.layer_types)}
            )
        self.routing_stats: RoutingStats | None = None

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def replace_projections(self, linear: Callable[[nn.Linear], nn.Module],
                            experts: Callable[[Experts], nn.Module]) -> CausalLM:
        """Swap every projection for another form of it, in place (int8, reordered weights): attention
        q/k/v and o, dense MLPs, the experts of sparse layers and the lm_head. Embeddings, norms and
        the router stay as they are."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.qkv_proj, module.o_proj = linear(module.qkv_proj), linear(module.o_proj)
            elif isinstance(module, DenseMLP):
                module.gate_up_proj, module.down_proj = linear(module.gate_up_proj), linear(module.down_proj)
            elif isinstance(module, SparseMoe):
                module.experts = experts(module.experts)
        self.lm_head = linear(self.lm_head)
        return self

    def track_routing(self, enabled: bool = True) -> RoutingStats | None:
        """Start (or stop) counting tokens per expert in every sparse layer."""
        self.routing_stats = RoutingStats() if enabled else None
        for layer in self.model.layers:
            if isinstance(layer.mlp, SparseMoe):
                layer.mlp.stats = self.routing_stats
        return self.routing_stats

    def _mask(self, kv: LayerKV, new: int, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive mask [T, S] shared by every layer of ``kv``'s kind; None when plain causal suffices."""
        window = kv.window if isinstance(kv, RingKV) else None
        if kv.offset == 0 and (window is None or new <= window):
            return None
        device = kv.shape.device
        queries = torch.arange(kv.offset, kv.offset + new, device=device)[:, None]
        keys = kv.key_positions(new)[None, :]
        allowed = (keys <= queries) & (keys >= 0)
        if window is not None:
            allowed &= keys > queries - window
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))

    def forward(self, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run ``input_ids`` [B, T] at positions ``cache.offset`` onwards; return hidden [B, T, H]."""
        new = input_ids.shape[1]
        x = self.model.embed_tokens(input_ids)
        positions = torch.arange(cache.offset, cache.offset + new, device=x.device)
        one_of_kind = {layer.attention_type: kv for layer, kv in zip(self.model.layers, cache.layers)}
        ropes = {kind: self.rotary[kind](positions, x.dtype) for kind in one_of_kind}
        masks = {kind: self._mask(kv, new, x.dtype) for kind, kv in one_of_kind.items()}
        for layer, kv in zip(self.model.layers, cache.layers):
            kind = layer.attention_type
            x = layer(x, ropes[kind], masks[kind], kv)
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def new_cache(self, batch: int = 1) -> KVCache:
        param = self.model.embed_tokens.weight
        return KVCache.for_model(self.config, batch, param.dtype, param.device)

