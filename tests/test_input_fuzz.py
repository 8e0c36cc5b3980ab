"""Property tests (hypothesis) of the readers that take user files: `uld generate`'s JSONL
requests and a forget set's manifest. Whatever the bytes, the answer is a result or one
UldError sentence, never another exception (which the CLI would show as a traceback)."""
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from uld_serve.core.artifact import MANIFEST, ForgetSet, read_manifest
from uld_serve.core.errors import UldError
from uld_serve.core.jsonl import read_objects
from uld_serve.generate import FIELDS, parse_requests

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
REQUEST = st.dictionaries(st.sampled_from(sorted(FIELDS)) | st.text(max_size=6), JSON, max_size=6)
MESSAGES = st.lists(st.fixed_dictionaries({"role": JSON | st.sampled_from(["user", "system", "assistant"]), "content": JSON}),
                    max_size=3)


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from uld_serve.core.models import load_tokenizer

    return load_tokenizer(tiny_base)


def only_uld_errors(call):
    try:
        return call()
    except UldError as e:
        assert "\n" not in str(e)
        return None


@SETTINGS
@given(rows=st.lists(REQUEST | st.builds(lambda m: {"messages": m}, MESSAGES), min_size=1, max_size=3))
def test_generate_requests_parse_or_fail_in_one_sentence(tokenizer, tmp_path, rows):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    only_uld_errors(lambda: parse_requests(path, tokenizer, {"f1": None}))


@SETTINGS
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_as_jsonl_read_or_fail_in_one_sentence(tmp_path, data):
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    only_uld_errors(lambda: list(read_objects(path)))


KEYS = ["format_version", "kind", "weights", "num_layers", "training", "base_fingerprint"]
VALUES = JSON | st.just(1) | st.sampled_from(["uld-assistant", "weight-level"]) | st.fixed_dictionaries({"rank": JSON})


@SETTINGS
@given(manifest=JSON | st.dictionaries(st.sampled_from(KEYS), VALUES), raw=st.none() | st.binary(max_size=64))
def test_any_manifest_reads_or_fails_in_one_sentence(tmp_path, manifest, raw):
    (tmp_path / MANIFEST).write_bytes(raw if raw is not None else json.dumps(manifest).encode())
    (tmp_path / "adapter_config.json").write_text("{}")
    read = only_uld_errors(lambda: read_manifest(tmp_path))
    if read is not None and read.get("weights") != "full":  # what the engine then reads from it
        fs = ForgetSet("f", tmp_path, read)
        assert fs.lora_rank >= 1 and (fs.is_weight_level or fs.num_layers >= 1)
