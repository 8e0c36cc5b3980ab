"""One decoder layer of the target and of its assistant over stacked rows (model.py's stacked
form): [target rows (n) | assistant rows] go through the norms, the rotary embedding and each
projection together, and through attention per half, each half with its own attention module
and KV cache. It imports only torch, so the step benchmark (benchmarks/step_bench.py) runs
this very function on a GPU without vLLM.

A layer here is anything shaped like vLLM's Llama decoder layer: `input_layernorm` and
`post_attention_layernorm` called as (x, residual) -> (x, residual); `self_attn` with
`qkv_proj`, `o_proj`, `q_size`, `kv_size`, `rotary_emb(positions, q, k)` and `attn(q, k, v)`;
`mlp` with `gate_up_proj`, `act_fn`, `down_proj`. `product(target_linear, assistant_linear,
x, n)` computes a linear over the stacked rows, each half with its own LoRA delta."""
from typing import Callable, Optional

import torch


def stacked_layer(target, assistant, positions: torch.Tensor, x: torch.Tensor, residual: Optional[torch.Tensor], n: int,
                  product: Callable) -> tuple:
    """(x, residual) after layer i for 2n stacked rows; `positions` are the n rows' positions twice."""
    if residual is None:
        residual, x = x, target.input_layernorm(x)
    else:
        x, residual = target.input_layernorm(x, residual)
    attn, twin = target.self_attn, assistant.self_attn
    qkv = product(attn.qkv_proj, twin.qkv_proj, x, n)
    q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
    q, k = attn.rotary_emb(positions, q, k)
    heads = torch.cat([attn.attn(q[:n], k[:n], v[:n]), twin.attn(q[n:], k[n:], v[n:])])
    x = product(attn.o_proj, twin.o_proj, heads, n)
    x, residual = target.post_attention_layernorm(x, residual)
    mlp, twin_mlp = target.mlp, assistant.mlp
    x = mlp.act_fn(product(mlp.gate_up_proj, twin_mlp.gate_up_proj, x, n))
    return product(mlp.down_proj, twin_mlp.down_proj, x, n), residual
