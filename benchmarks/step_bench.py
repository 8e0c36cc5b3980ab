"""One decode step of ULD's three forms at production shapes, in plain torch with random
weights (vLLM is not on the lent GPU machines), with CUDA graphs on a GPU:

- plain: the target alone (L layers, LM head);
- after: the target, then the assistant's K layers (LoRA r on every linear, their own KV
  cache) and both LM heads in one product (the wrapper's earlier form);
- stacked: layers 0..K-1 run target and assistant rows as one product per projection
  (the engine's own `uld_serve.engine.stacking.stacked_layer`), then layers K..L-1.

    python benchmarks/step_bench.py                        # on a GPU: 8B and 1B shapes, B 1..256, bf16
    python benchmarks/step_bench.py --shape tiny --device cpu --batches 1 4   # CI

Each row: the median of --repeats timings of --iters replayed steps; ratios against plain in
the same run. Attention reads a KV cache of --context tokens per row. The LM heads are
dense; the logit-difference kernel is timed by kernel_bench.py. The check line compares the
stacked and after forms' logits (the same arithmetic, summed in another order).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uld_serve.engine.stacking import stacked_layer  # noqa: E402

SHAPES = {  # hidden, intermediate, layers, heads, KV heads, vocabulary; K is a quarter of the depth
    "8b": dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256),
    "1b": dict(hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8, vocab=128256),
    "tiny": dict(hidden=128, intermediate=256, layers=4, heads=4, kv_heads=2, vocab=1024),
}


class Norm:
    """RMSNorm called as vLLM's: x -> x, or (x, residual) -> (norm(x + residual), x + residual)."""

    def __init__(self, hidden, device, dtype):
        self.weight = torch.ones(hidden, device=device, dtype=dtype)

    def __call__(self, x, residual=None):
        if residual is not None:
            x = residual = x + residual
        out = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)
        out = (out * self.weight.float()).to(x.dtype)
        return out if residual is None else (out, residual)


class Linear:
    def __init__(self, weight, lora=None):
        self.weight, self.lora = weight, lora  # lora: (A (r, in), B (out, r)) on the assistant's modules


def product(target_linear, assistant_linear, x, n):
    """The stacked form's linear: one product over all rows, the LoRA delta on the assistant's."""
    out = x @ target_linear.weight.T
    if assistant_linear.lora is not None:
        a, b = assistant_linear.lora
        out[n:] += (x[n:] @ a.T) @ b.T
    return out


def single(linear, x):
    out = x @ linear.weight.T
    if linear.lora is not None:
        a, b = linear.lora
        out = out + (x @ a.T) @ b.T
    return out


class Rotary:
    def __init__(self, head_dim, context, device, dtype):
        inverse = 1.0 / (500000 ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
        angles = torch.arange(context + 1, device=device).float()[:, None] * inverse[None]
        self.cos, self.sin, self.head_dim = angles.cos().to(dtype), angles.sin().to(dtype), head_dim

    def rotate(self, x, positions):
        x = x.unflatten(-1, (-1, self.head_dim))
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        first, second = x.chunk(2, dim=-1)
        return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1).flatten(-2)

    def __call__(self, positions, q, k):
        return self.rotate(q, positions), self.rotate(k, positions)


class Attention:
    """Decode attention of each row's one new token over its own cached keys and values."""

    def __init__(self, rows, kv_heads, head_dim, context, device, dtype):
        self.k = torch.randn(rows, kv_heads, context, head_dim, device=device, dtype=dtype)
        self.v = torch.randn_like(self.k)
        self.head_dim = head_dim

    def __call__(self, q, k, v):
        rows = q.shape[0]
        q = q.view(rows, -1, 1, self.head_dim)
        self.k[:rows, :, -1] = k.view(rows, -1, self.head_dim)  # the step's own key and value, in place
        self.v[:rows, :, -1] = v.view(rows, -1, self.head_dim)
        out = F.scaled_dot_product_attention(q, self.k[:rows], self.v[:rows], enable_gqa=True)
        return out.reshape(rows, -1)


def silu_and_mul(x):
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def build(shape, rows, rank, context, device, dtype):
    s = SimpleNamespace(**SHAPES[shape])
    head_dim, k_layers = s.hidden // s.heads, max(1, s.layers // 4)
    q_size, kv_size = s.heads * head_dim, s.kv_heads * head_dim
    rotary = Rotary(head_dim, context, device, dtype)
    torch.manual_seed(0)

    def weight(out, inp):
        return torch.randn(out, inp, device=device, dtype=dtype) * inp ** -0.5

    def lora(out, inp):
        return (torch.randn(rank, inp, device=device, dtype=dtype) * inp ** -0.5,
                torch.randn(out, rank, device=device, dtype=dtype) * 0.01)

    def layer(weights, with_lora):
        attn = SimpleNamespace(q_size=q_size, kv_size=kv_size, rotary_emb=rotary,
                               attn=Attention(rows, s.kv_heads, head_dim, context, device, dtype))
        mlp = SimpleNamespace(act_fn=silu_and_mul)
        linears = ((attn, "qkv_proj", (q_size + 2 * kv_size, s.hidden)), (attn, "o_proj", (s.hidden, q_size)),
                   (mlp, "gate_up_proj", (2 * s.intermediate, s.hidden)), (mlp, "down_proj", (s.hidden, s.intermediate)))
        for owner, name, (out, inp) in linears:
            setattr(owner, name, Linear(weights[name], lora(out, inp) if with_lora else None))
        return SimpleNamespace(input_layernorm=Norm(s.hidden, device, dtype), post_attention_layernorm=Norm(s.hidden, device, dtype),
                               self_attn=attn, mlp=mlp)

    shared = [{"qkv_proj": weight(q_size + 2 * kv_size, s.hidden), "o_proj": weight(s.hidden, q_size),
               "gate_up_proj": weight(2 * s.intermediate, s.hidden), "down_proj": weight(s.hidden, s.intermediate)}
              for _ in range(s.layers)]
    return SimpleNamespace(
        layers=[layer(w, False) for w in shared], assistant=[layer(w, True) for w in shared[:k_layers]],
        norm=Norm(s.hidden, device, dtype), head=weight(s.vocab, s.hidden), k_layers=k_layers, hidden=s.hidden)


def layer_forward(layer, positions, x, residual):
    """One decoder layer on its own rows, as vLLM's Llama layer computes it."""
    if residual is None:
        residual, x = x, layer.input_layernorm(x)
    else:
        x, residual = layer.input_layernorm(x, residual)
    attn = layer.self_attn
    q, k, v = single(attn.qkv_proj, x).split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
    q, k = attn.rotary_emb(positions, q, k)
    x = single(attn.o_proj, attn.attn(q, k, v))
    x, residual = layer.post_attention_layernorm(x, residual)
    return single(layer.mlp.down_proj, layer.mlp.act_fn(single(layer.mlp.gate_up_proj, x))), residual


def run_layers(layers, positions, x, residual=None):
    for layer in layers:
        x, residual = layer_forward(layer, positions, x, residual)
    return x, residual


def plain(m, embeds, positions):
    x, residual = run_layers(m.layers, positions, embeds)
    return m.norm(x, residual)[0] @ m.head.T


def after(m, embeds, positions):
    target = m.norm(*run_layers(m.layers, positions, embeds))[0]
    assistant = m.norm(*run_layers(m.assistant, positions, embeds))[0]
    return torch.cat([target, assistant]) @ m.head.T


def stacked(m, embeds, positions):
    n, k = embeds.shape[0], m.k_layers
    x, residual, both = torch.cat([embeds, embeds]), None, torch.cat([positions, positions])
    for layer, twin in zip(m.layers[:k], m.assistant):
        x, residual = stacked_layer(layer, twin, both, x, residual, n, product)
    target = m.norm(*run_layers(m.layers[k:], positions, x[:n], residual[:n]))[0]
    assistant = m.norm(x[n:], residual[n:])[0]
    return torch.cat([target, assistant]) @ m.head.T


FORMS = {"plain": plain, "after": after, "stacked": stacked}


def timer(fn, device, iters):
    """A callable returning seconds per step: a CUDA graph replayed `iters` times on a GPU, the
    eager step on the CPU."""
    if device.type != "cuda":
        def eager():
            started = time.perf_counter()
            for _ in range(iters):
                fn()
            return (time.perf_counter() - started) / iters
        return eager
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()

    def replay():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000 / iters
    return replay


def bench_shape(shape, batches, args, device, dtype):
    print(f"\nshape {shape} ({SHAPES[shape]}), K = a quarter of the layers, LoRA r {args.rank}, context {args.context}, {dtype}, "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}")
    print("| B | plain ms | after ms | stacked ms | after vs plain | stacked vs plain |")
    print("|---|---|---|---|---|---|")
    m = build(shape, max(batches), args.rank, args.context, device, dtype)
    for rows in batches:
        embeds = torch.randn(rows, m.hidden, device=device, dtype=dtype) * 0.1
        positions = torch.full((rows,), args.context - 1, device=device, dtype=torch.long)
        with torch.inference_mode():
            if rows == batches[0]:
                a, b = after(m, embeds, positions).float(), stacked(m, embeds, positions).float()
                error = ((a - b).abs().max() / a.abs().max()).item()
                print(f"(check at B = {rows}: stacked against after, max relative difference of the logits {error:.2e})")
            timers = {name: timer(lambda f=form: f(m, embeds, positions), device, args.iters) for name, form in FORMS.items()}
            seconds = {name: [] for name in FORMS}
            for _ in range(args.repeats):  # interleaved, so that a slow spell hits every form
                for name, time_it in timers.items():
                    seconds[name].append(time_it())
        ms = {name: statistics.median(s) * 1000 for name, s in seconds.items()}
        print(f"| {rows} | {ms['plain']:.3f} | {ms['after']:.3f} | {ms['stacked']:.3f} | "
              f"{ms['plain'] / ms['after']:.2f}x | {ms['plain'] / ms['stacked']:.2f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", nargs="+", default=["8b", "1b"], choices=sorted(SHAPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 64, 128, 256])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["bf16", "fp32"], help="default: bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    for shape in args.shape:
        bench_shape(shape, sorted(args.batches), args, device, dtype)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the shape's weights and graphs went with bench_shape


if __name__ == "__main__":
    main()
