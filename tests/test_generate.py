import json

import pytest

from uld_serve.core.errors import UldError
from uld_serve.api import UldLLM
from uld_serve.generate import run_generate
from uld_serve.reference import UldModel

from helpers import assert_user_error, uld

LINES = [
    {"id": "a", "prompt": "Who wrote Hamlet?", "max_tokens": 10},
    {"id": "b", "prompt": "Who is Hsiao Yun-Hwa?", "forget_set": "f1", "max_tokens": 6},
    {"id": "c", "messages": [{"role": "user", "content": "Hi"}], "forget_set": "f2", "alpha": 2.0, "max_tokens": 5},
    {"id": "d", "prompt": "Who is Hsiao Yun-Hwa?", "max_tokens": 6},
    {"id": "e", "prompt_ids": [1, 2, 3, 4], "forget_set": "f1", "alpha": 0.0, "max_tokens": 4},
    {"id": "f", "prompt": "Who wrote Hamlet?", "repetition_penalty": 0.5, "max_tokens": 10},
    {"id": "g", "prompt": "Who wrote Hamlet?", "frequency_penalty": -2.0, "presence_penalty": -0.5, "max_tokens": 10},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def reference(tiny_target, forget_sets):
    return UldModel(tiny_target, forget_sets)


class Flaky:
    """A backend that dies after `survive` generate calls, like a killed job."""

    def __init__(self, inner, survive):
        self.inner, self.survive = inner, survive
        self.tokenizer, self.forget_sets = inner.tokenizer, inner.forget_sets

    def settings(self, *args):
        return self.inner.settings(*args)

    def generate(self, requests, progress=None):
        if self.survive == 0:
            raise KeyboardInterrupt
        self.survive -= 1
        return self.inner.generate(requests)


def test_output_in_input_order_and_resume(reference, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", LINES)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_generate(UldLLM.from_backend(Flaky(reference, 1)), source, out, chunk_size=2)
    assert not out.exists()  # no half output
    calls = []

    class Counting(Flaky):
        def generate(self, requests, progress=None):
            calls.append(len(requests))
            return super().generate(requests)

    run_generate(UldLLM.from_backend(Counting(reference, 99)), source, out, chunk_size=2)
    assert calls == [2, 2, 1]  # the first chunk came from the partial file
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c", "d", "e", "f", "g"]
    assert [r["alpha"] for r in rows] == [0.0, 0.75, 2.0, 0.0, 0.0, 0.0, 0.0]
    assert [r["repetition_penalty"] for r in rows] == [None, None, 0.5, None, None, 0.5, None]  # f2's manifest, line f's own
    assert rows[5]["token_ids"] != rows[0]["token_ids"]  # the same prompt: the penalty changed the answer
    assert rows[6]["token_ids"] != rows[0]["token_ids"]  # and so did the frequency and presence penalties (favouring repeats)
    straight = tmp_path / "straight.jsonl"
    run_generate(UldLLM.from_backend(reference), source, straight)
    assert straight.read_text() == out.read_text()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.mark.parametrize("row,message", [
    ({"prompt": "x", "forget_set": "nope"}, "line 2: unknown forget set 'nope'; known forget sets: f1, f2"),
    ({"prompt": "x", "alpha": 9}, "line 2: alpha must be a number in [0.0, 5.0]"),
    ({"prompt": "x", "relative_top": 0}, "line 2: relative_top must be a number in (0, 1]"),
    ({"prompt": "x", "repetition_penalty": -1}, "line 2: repetition_penalty must be a number above 0"),
    ({"prompt": "x", "frequency_penalty": 3}, "line 2: frequency_penalty must be a number in [-2, 2] (0: none), got 3"),
    ({"prompt": 3}, "line 2: prompt must be a string"),
    ({"prompt": "x", "prompt_ids": [1]}, "line 2: give exactly one of"),
    ({"prompt": "x", "colour": "red"}, "line 2: unknown field(s) 'colour'"),
])
def test_bad_lines_are_named(reference, tmp_path, row, message):
    source = write_jsonl(tmp_path / "in.jsonl", [LINES[0], row])
    with pytest.raises(UldError) as info:
        run_generate(UldLLM.from_backend(reference), source, tmp_path / "out.jsonl")
    assert message in str(info.value)
    assert list(tmp_path.iterdir()) == [source]


@pytest.mark.vllm
def test_cli_vllm_equals_reference(tiny_target, forget_sets, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", LINES)
    sets = [x for name, path in forget_sets.items() for x in ("--forget-set", f"{name}={path}")]
    uld("generate", "--target", tiny_target, *sets, "--input", source, "--output", tmp_path / "ref.jsonl", "--engine", "reference")
    uld("generate", "--target", tiny_target, *sets, "--input", source, "--output", tmp_path / "vllm.jsonl", "--max-model-len", "512")
    assert (tmp_path / "vllm.jsonl").read_text() == (tmp_path / "ref.jsonl").read_text()
    bad = write_jsonl(tmp_path / "bad.jsonl", [LINES[0], {"prompt": "x", "forget_set": "zzz"}])
    assert_user_error(uld("generate", "--target", tiny_target, *sets, "--input", bad, "--output", tmp_path / "o.jsonl", check=False),
                      "line 2: unknown forget set 'zzz'")
    assert not (tmp_path / "o.jsonl").exists()
