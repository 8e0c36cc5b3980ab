from types import SimpleNamespace

import pytest
import torch

from uld_serve.engine import cpu_lora

pytestmark = pytest.mark.vllm  # every test here starts or imports vLLM


def tokenwise(x, weights, indices):
    """Each token's own adapter weights, one product per token; index -1 (no adapter) gives 0."""
    products = torch.einsum("bi,boi->bo", x, weights.squeeze(1)[indices])
    return torch.where(indices[:, None] >= 0, products, 0.0)


def test_grouped_products_equal_tokenwise_ones():
    g = torch.Generator().manual_seed(0)
    x, idx = torch.randn(9, 16, generator=g), torch.tensor([0, 2, -1, 1, 0, 2, 2, -1, 1])
    a, b = torch.randn(3, 1, 8, 16, generator=g), torch.randn(3, 1, 20, 8, generator=g)
    shrunk = torch.zeros(9, 8)
    cpu_lora.bgmv_shrink(x, a, shrunk, idx, 0.5)
    assert torch.allclose(shrunk, 0.5 * tokenwise(x, a, idx), atol=1e-5)
    out = torch.randn(9, 24)
    expected = out.clone()
    expected[:, :20] += tokenwise(shrunk, b, idx)
    cpu_lora.bgmv_expand(shrunk, b, out, idx, add_inputs=True)
    assert torch.allclose(out, expected, atol=1e-5)
    out = torch.randn(9, 30)
    expected = out.clone()
    expected[:, 5:25] = tokenwise(shrunk, b, idx)
    cpu_lora.bgmv_expand_slice(shrunk, b, out, idx, 5, 20, add_inputs=False)
    assert torch.allclose(out, expected, atol=1e-5)


def test_a_batch_on_one_adapter_takes_that_adapters_weights():
    g = torch.Generator().manual_seed(1)
    x, a = torch.randn(5, 16, generator=g), torch.randn(3, 1, 8, 16, generator=g)
    for slot in (1, 2):
        idx = torch.full((5,), slot)
        shrunk = torch.zeros(5, 8)
        cpu_lora.bgmv_shrink(x, a, shrunk, idx, 2.0)
        assert torch.allclose(shrunk, 2.0 * tokenwise(x, a, idx), atol=1e-5)


def test_tokens_without_an_adapter_get_no_lora_term():
    # vLLM marks them -1; its own CPU ops read the last slot for them (a weight-level forget set
    # sitting there would change the plain target's answers)
    g = torch.Generator().manual_seed(2)
    x, a, b = torch.randn(4, 16, generator=g), torch.randn(2, 1, 8, 16, generator=g), torch.randn(2, 1, 20, 8, generator=g)
    for idx in (torch.full((4,), -1), torch.tensor([-1, 1, -1, 0])):
        shrunk = torch.ones(4, 8)
        cpu_lora.bgmv_shrink(x, a, shrunk, idx, 1.0)
        assert torch.equal(shrunk[idx < 0], torch.zeros(int((idx < 0).sum()), 8))
        out = torch.randn(4, 20)
        before = out.clone()
        cpu_lora.bgmv_expand(shrunk, b, out, idx, add_inputs=True)
        assert torch.equal(out[idx < 0], before[idx < 0])


def test_lora_linear_adds_every_slice_with_each_tokens_adapter():
    # vLLM's semantics: y[:, slice i] += scale * (x @ A_i.T) @ B_i.T, A_i and B_i of each token's slot
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 16, generator=g)
    slices = (12, 4, 4)  # a fused q/k/v-like output
    lora_a = tuple(torch.randn(3, 1, 8, 16, generator=g) for _ in slices)
    lora_b = tuple(torch.randn(3, 1, size, 8, generator=g) for size in slices)
    for idx, shared in ((torch.tensor([0, 2, -1, 1, 2, 2]), None), (torch.full((6,), 1), 1), (torch.full((6,), 1), None)):
        wrapper = SimpleNamespace(no_lora=False, token_lora_indices=idx, uld_shared_slot=shared)
        y = torch.randn(6, sum(slices))
        expected, offset = y.clone(), 0
        for a, b, size in zip(lora_a, lora_b, slices):
            expected[:, offset : offset + size] += tokenwise(0.5 * tokenwise(x, a, idx), b, idx)
            offset += size
        cpu_lora.add_lora_linear(wrapper, y, x, lora_a, lora_b, 0.5, slices)
        assert torch.allclose(y, expected, atol=1e-4), (idx, shared)
    wrapper = SimpleNamespace(no_lora=True, token_lora_indices=torch.full((6,), -1), uld_shared_slot=None)
    y = torch.randn(6, sum(slices))
    before = y.clone()
    cpu_lora.add_lora_linear(wrapper, y, x, lora_a, lora_b, 0.5, slices)
    assert torch.equal(y, before)


def test_the_shared_slot_is_noted_once_per_step():
    def update_metadata(self, indices):
        self.token_lora_indices = indices

    update = cpu_lora._with_shared_slot(update_metadata)
    wrapper = SimpleNamespace()
    cases = ((torch.full((4,), 2), 2), (torch.tensor([2, 2, 0, 2]), None), (torch.full((4,), -1), None),
             (torch.zeros(0, dtype=torch.long), None))
    for indices, shared in cases:
        update(wrapper, indices)
        assert wrapper.uld_shared_slot == shared
