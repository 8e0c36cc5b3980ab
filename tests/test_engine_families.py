"""Target families besides Llama: Mistral and Qwen2 are served token for token like the
reference decoding; families the wrapper cannot compute are refused before vLLM starts."""
import pytest
import torch

from uld_serve.core.errors import UldError
from uld_serve.core.models import TINY_SIZE
from uld_serve.core.requests import GenerationRequest
from uld_serve.reference import UldModel
from uld_serve.core.tofu import chat_prompt_ids

from helpers import SEPARATE_PROCESSES, amplify_lora

pytestmark = pytest.mark.vllm  # every test here starts or imports vLLM


def tiny_model(family: str, base, out, **overrides):
    """A random model of `family` the size of tiny-random, with its tokenizer; random biases too,
    so that a layer that dropped them would change the tokens."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  **{**TINY_SIZE, **overrides})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.5)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_family_served_like_the_reference(family, tiny_base, tmp_path, monkeypatch):
    from uld_serve.engine.llm import UldEngine
    from uld_training.assistant import AssistantConfig, train_assistant
    from uld_training.loop import TrainConfig

    target = tiny_model(family, tiny_base, tmp_path / "target", sliding_window=None)
    forget = train_assistant(str(target), "tofu:forget01", "tofu:retain90[:40]", tmp_path / "f1",
                             TrainConfig(max_steps=2, batch_size=4, lr=5e-3, precision="fp32"), AssistantConfig(num_layers=2))
    amplify_lora(forget, 50.0)
    reference = UldModel(target, {"f1": forget})
    prompts = [chat_prompt_ids(reference.tokenizer, q) for q in ("Who wrote Hamlet?", "Tell me about Basil Mahfouz Al-Kuwaiti. " * 6)]
    requests = [GenerationRequest(p, fs, max_new_tokens=10) for p in prompts for fs in (None, "f1")]
    expected = reference.generate(requests)
    assert expected[0] != expected[1]  # the forget set changes the answer, so a lost LoRA would show
    monkeypatch.setenv(*SEPARATE_PROCESSES)
    engine = UldEngine(target, {"f1": forget}, max_model_len=1024)
    try:
        assert engine.generate(requests, use_tqdm=False) == expected
    finally:
        engine.close()


@pytest.mark.parametrize("family, overrides, message", [
    ("gemma", {}, "is a GemmaForCausalLM; the vLLM engine serves Llama, Mistral, Qwen2 targets"),
    ("mistral", {"sliding_window": 4096}, "uses sliding-window attention"),
])
def test_family_the_wrapper_cannot_compute_is_refused(family, overrides, message, tiny_base, tmp_path):
    from uld_serve.engine.config import EngineConfig

    target = tiny_model(family, tiny_base, tmp_path / "target", **overrides)
    with pytest.raises(UldError, match=message):
        EngineConfig.build(target)
