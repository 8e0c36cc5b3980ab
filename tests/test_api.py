"""The Python API (uld_serve.UldLLM) over the reference decoder: vLLM's conventions, per-prompt
forget sets, what was applied, and one-sentence refusals before any work."""
import pytest

from uld_serve import SamplingParams, UldLLM
from uld_serve.core.errors import UldError
from uld_serve.core.requests import GenerationRequest
from uld_serve.core.tofu import chat_prompt_ids


@pytest.fixture(scope="module")
def llm(tiny_target, forget_sets):
    return UldLLM(tiny_target, forget_sets, engine="reference")


def test_chat_and_generate_follow_the_backend_token_for_token(llm):
    greedy = SamplingParams(temperature=0, max_tokens=8)
    question = "Who is Basil Mahfouz Al-Kuwaiti?"
    outs = llm.chat([[{"role": "user", "content": question}]] * 3, greedy, forget_set=[None, "f1", "f2"], alpha=[None, None, 2.0],
                    use_tqdm=False)
    prompt = chat_prompt_ids(llm.tokenizer, question, system=None)
    direct = llm.backend.generate([GenerationRequest(prompt, None, max_new_tokens=8), GenerationRequest(prompt, "f1", max_new_tokens=8),
                                   GenerationRequest(prompt, "f2", alpha=2.0, max_new_tokens=8)])
    assert [o.outputs[0].token_ids for o in outs] == direct
    assert [o.prompt_token_ids for o in outs] == [prompt] * 3
    assert outs[1].outputs[0].text == llm.tokenizer.decode(direct[1], skip_special_tokens=True)
    none = {"frequency_penalty": None}
    assert [o.uld for o in outs] == [{"forget_set": None, "alpha": 0.0, "relative_top": 0.01, "repetition_penalty": None, **none},
                                     {"forget_set": "f1", "alpha": 0.75, "relative_top": 0.01, "repetition_penalty": None, **none},
                                     {"forget_set": "f2", "alpha": 2.0, "relative_top": 0.01, "repetition_penalty": 0.5, **none}]
    text = llm.generate("Who wrote Hamlet?", greedy, use_tqdm=False)[0]
    assert text.prompt == "Who wrote Hamlet?" and len(text.outputs[0].token_ids) <= 8
    by_ids = llm.generate({"prompt_token_ids": text.prompt_token_ids}, greedy, use_tqdm=False)[0]
    assert by_ids.outputs[0].token_ids == text.outputs[0].token_ids


@pytest.mark.parametrize("kwargs,message", [
    ({"forget_set": "nope"}, "unknown forget set 'nope'"),
    ({"forget_set": "f1", "alpha": 7}, "alpha must be a number in [0.0, 5.0]"),
    ({"forget_set": ["f1"]}, "forget_set has 1 values for 2 prompts"),
])
def test_bad_requests_are_refused_before_any_work(llm, kwargs, message):
    with pytest.raises(UldError, match=message.replace("[", r"\[").replace("]", r"\]")):
        llm.generate(["a", "b"], SamplingParams(max_tokens=2), use_tqdm=False, **kwargs)


def test_output_penalties_out_of_vllms_range_are_refused(llm):
    with pytest.raises(UldError, match=r"presence_penalty must be a number in \[-2, 2\] \(0: none\), got 2.5"):
        llm.generate(["a"], SamplingParams(max_tokens=2, presence_penalty=2.5), use_tqdm=False)


def test_the_vllm_engine_refuses_a_device(tiny_target):
    with pytest.raises(UldError, match="--device places the reference engine"):
        UldLLM(tiny_target, engine="vllm", device="cpu")
