"""Grouped LoRA products for vLLM's CPU backend.

vLLM 0.32's CPU LoRA ops (vllm.lora.ops.torch_ops) copy each token's adapter weights
(`weights[indices]`, tokens x out x in) and multiply them one token at a time (a batched
einsum). A decode batch holds only a few distinct adapters, so one matrix product per
adapter does the same arithmetic without the copies: on SmolLM2 with a forget set on
every request this doubled ULD decode throughput (BENCHMARKS.md). The plugin installs
these in place of the three token-wise ops on the CPU platform only; the results are the
same products, summed in another order.

Index -1 marks a token without an adapter. vLLM's token-wise ops index the last slot with
it (`weights[-1]`), which gives such tokens the adapter that happens to sit in the last
slot; harmless for ULD forget sets (rows without one have alpha 0), wrong for weight-level
ones, which change the target itself. Here such tokens get no LoRA term.
"""
import torch


def gathered_products(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype) -> torch.Tensor:
    """Row t of the result is inputs[t] @ weights[indices[t]].T, or zeros where indices[t] is -1
    (no adapter), computed with one matmul per distinct index."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    inputs = inputs.to(dtype)
    indices = indices[: inputs.shape[0]]
    lowest, highest = indices.aminmax()
    if lowest == highest and lowest >= 0:  # the usual decode batch: every row on one adapter
        return inputs @ weights[lowest].to(dtype).T
    out = torch.zeros(inputs.shape[0], weights.shape[1], dtype=dtype, device=inputs.device)
    for slot in torch.unique(indices).tolist():
        if slot < 0:
            continue
        rows = (indices == slot).nonzero().squeeze(1)
        out[rows] = inputs[rows] @ weights[slot].to(dtype).T
    return out


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling=1.0):
    products = gathered_products(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : products.shape[1]] = scaling * products


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
    products = gathered_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    rows = 1 if products.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    width = min(products.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :width] += products[:rows, :width]
    else:
        output_tensor[:, :width] = products[:rows, :width]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size, add_inputs=True):
    products = gathered_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += products
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = products


def install() -> None:
    """Swap the token-wise ops for the grouped ones where vLLM's CPU LoRA looks them up."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (lora_ops, punica_cpu):
        module.bgmv_shrink = bgmv_shrink
        module.bgmv_expand = bgmv_expand
        module.bgmv_expand_slice = bgmv_expand_slice
