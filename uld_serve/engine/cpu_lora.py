"""Grouped LoRA products for vLLM's CPU backend.

vLLM 0.32's CPU LoRA ops (vllm.lora.ops.torch_ops) copy each token's adapter weights
(`weights[indices]`, tokens x out x in) and multiply them one token at a time (a batched
einsum). A decode batch holds only a few distinct adapters, so one matrix product per
adapter does the same arithmetic without the copies (BENCHMARKS.md has the gain). The plugin installs
these in place of the three token-wise ops on the CPU platform only; the results are the
same products, summed in another order.

vLLM's V1 runner also marks every step as a prefill, so each LoRA linear went through the
prefill (sgmv) ops: per slice and per shrink/expand, per-sequence indices expanded to
tokens again and an adapter check, bookkeeping that cost more than the products themselves
(BENCHMARKS.md). `add_lora_linear` below replaces that path:
each token's adapter slot is read from vLLM's token-level indices, and whether the whole
step shares one slot is decided once per step (`update_metadata`), not once per product.

Index -1 marks a token without an adapter. vLLM's token-wise ops index the last slot with
it (`weights[-1]`), which gives such tokens the adapter that happens to sit in the last
slot; harmless for ULD forget sets (rows without one have alpha 0), wrong for weight-level
ones, which change the target itself. Here such tokens get no LoRA term.
"""
import torch


def shared_slot(indices: torch.Tensor):
    """The adapter slot every token uses (the usual decode batch), or None when they differ or
    some have no adapter."""
    if not indices.numel():
        return None
    lowest, highest = indices.aminmax()
    return int(lowest) if lowest == highest and lowest >= 0 else None


def gathered_products(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype, slot) -> torch.Tensor:
    """Row t of the result is inputs[t] @ weights[indices[t]].T, or zeros where indices[t] is -1
    (no adapter): one matmul when every row uses `slot` (`shared_slot(indices)`), else one
    per distinct index."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    inputs = inputs.to(dtype)
    if slot is not None:
        return inputs @ weights[slot].to(dtype).T
    indices = indices[: inputs.shape[0]]
    out = torch.zeros(inputs.shape[0], weights.shape[1], dtype=dtype, device=inputs.device)
    for index in torch.unique(indices).tolist():
        if index < 0:
            continue
        rows = (indices == index).nonzero().squeeze(1)
        out[rows] = inputs[rows] @ weights[index].to(dtype).T
    return out


def _products(inputs, weights, indices, dtype):
    return gathered_products(inputs, weights, indices, dtype, shared_slot(indices[: inputs.shape[0]]))


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling=1.0):
    products = _products(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : products.shape[1]] = scaling * products


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
    products = _products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    rows = 1 if products.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    width = min(products.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :width] += products[:rows, :width]
    else:
        output_tensor[:, :width] = products[:rows, :width]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size, add_inputs=True):
    products = _products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += products
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = products


def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None,
                    add_inputs=True, **kwargs):
    """PunicaWrapperCPU.add_lora_linear, same semantics (y[:, slice i] += scale * x @ A_i.T @ B_i.T
    with each token's adapter; the shrunk product kept in fp32 as vLLM's ops keep it), through
    the grouped products and without the prefill bookkeeping."""
    out = y.view(-1, y.shape[-1])
    if not add_inputs:
        out.zero_()
    if self.no_lora:
        return
    x = x.view(-1, x.shape[-1])
    indices, slot = self.token_lora_indices, getattr(self, "uld_shared_slot", None)  # None: mixed or not known
    offset = 0
    for lora_a, lora_b, size in zip(lora_a_stacked, lora_b_stacked, output_slices):
        shrunk = gathered_products(x, lora_a, indices, torch.float32, slot)
        if scale != 1.0:
            shrunk *= scale
        out[:, offset : offset + size] += gathered_products(shrunk, lora_b, indices, out.dtype, slot)
        offset += size


def _with_shared_slot(update_metadata):
    """Wraps PunicaWrapperCPU.update_metadata to note, once per step, the adapter slot that every
    token of the step uses (None when they differ or some have none)."""

    def update(self, *args, **kwargs):
        update_metadata(self, *args, **kwargs)
        self.uld_shared_slot = shared_slot(self.token_lora_indices)

    return update


def install() -> None:
    """Swap the token-wise ops for the grouped ones where vLLM's CPU LoRA looks them up, and
    its LoRA linears' path for the one above. Runs once per process (vLLM's plugin hook)."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (lora_ops, punica_cpu):
        module.bgmv_shrink = bgmv_shrink
        module.bgmv_expand = bgmv_expand
        module.bgmv_expand_slice = bgmv_expand_slice
    wrapper = punica_cpu.PunicaWrapperCPU
    if wrapper.add_lora_linear is not add_lora_linear:
        wrapper.add_lora_linear = add_lora_linear
        wrapper.update_metadata = _with_shared_slot(wrapper.update_metadata)
