"""A weight-level forget set (a LoRA on the target) served by the engine next to a ULD one."""
import pytest

from uld_serve.core.requests import GenerationRequest

from uld_serve.reference import UldModel
from uld_serve.core.tofu import chat_prompt_ids

from helpers import QUESTIONS, SEPARATE_PROCESSES

pytestmark = pytest.mark.vllm  # every test here starts or imports vLLM


@pytest.fixture(scope="module")
def sets(forget_sets, weight_level_set):
    return {"f1": forget_sets["f1"], "ga": weight_level_set}


def test_mixed_batch_with_a_weight_level_set_equals_reference(tiny_target, sets, monkeypatch):
    from uld_serve.engine.llm import UldEngine

    reference = UldModel(tiny_target, sets)
    p = [chat_prompt_ids(reference.tokenizer, q) for q in QUESTIONS[:3]]
    requests = [GenerationRequest(p[0], "ga", max_new_tokens=10), GenerationRequest(p[1], None, max_new_tokens=10),
                GenerationRequest(p[1], "ga", alpha=2.0, max_new_tokens=10), GenerationRequest(p[1], "f1", max_new_tokens=10),
                GenerationRequest(p[2], "ga", max_new_tokens=10)]
    expected = reference.generate(requests)
    assert expected[1] != expected[2]  # the weight-level LoRA changes the answer
    monkeypatch.setenv(*SEPARATE_PROCESSES)
    engine = UldEngine(tiny_target, sets, max_model_len=512)
    try:
        assert engine.generate(requests, use_tqdm=False) == expected
    finally:
        engine.close()
