import torch

from uld_serve.engine import cpu_lora


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
