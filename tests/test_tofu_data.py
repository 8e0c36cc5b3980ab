import json
import re

import pytest

from uld_serve.core.errors import UldError
from uld_serve.core.tofu import (DATA_DIR, IGNORE_INDEX, QA, check_prompt_forms, encode_qa, load_qa, paraphrased_pairs,
                                 perturbed_pairs)


def test_specs_select_the_documented_rows():
    full = load_qa("tofu:full")
    assert len(full) == 4000
    assert load_qa("tofu:forget10") == full[3600:]
    assert load_qa("tofu:retain90") == full[:3600]
    assert load_qa("tofu:forget01") == full[-40:]
    assert load_qa("tofu-mini:target") == full[:400] + full[3600:]
    assert load_qa("tofu-mini:retain") == full[:400]


def test_shipped_general_qa_is_apart_from_tofu():
    from uld_serve.core.tofu import SPLITS, load_split

    train, heldout = load_qa("general:train"), load_qa("general:heldout")
    assert len(train) >= 200 and len(heldout) >= 50
    names = load_qa("general:names-train") + load_qa("general:names-heldout")
    openers = tuple(json.loads((DATA_DIR / "general" / "names-config.json").read_text())["openers"])
    assert len(names) >= 200 and all(qa.question.startswith(openers) for qa in names)  # none asks who wrote what
    questions = [qa.question for qa in train + heldout + names]
    assert len(set(questions)) == len(questions)  # held-out questions are not training questions
    tofu = {r["question"].strip().lower() for s in SPLITS for r in load_split(s)}
    assert not tofu & {q.strip().lower() for q in questions}
    assert load_qa("tofu:full[:2]+general:train[:1]")[2] == train[0]


@pytest.mark.parametrize("spec,message", [
    ("tofu:nope", "unknown TOFU split 'nope'"), ("general:test", "unknown general split 'test'"),
    ("wiki:forget10", "bad data spec 'wiki:forget10'"), ("tofu:forget10[a:b]", "bad data spec 'tofu:forget10[a:b]'"),
    ("tofu:forget10[5:5]", "selects no questions"),
])
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(UldError, match=re.escape(message)):
        load_qa(spec)


def test_jsonl_specs_read_a_users_own_pairs(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"question": "Who is A?", "answer": "A is B."}\n\n{"question": "Q2", "answer": "A2", "id": 7}\n')
    assert load_qa(f"jsonl:{data}") == [QA("Who is A?", "A is B."), QA("Q2", "A2")]
    assert load_qa(f"jsonl:{data}[1:]+tofu:forget01[:1]") == [QA("Q2", "A2"), load_qa("tofu:forget01")[0]]


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    ('{"question": "Q"}\n', "line 1: expected an object with string fields question and answer"),
    ('{"question": "Q", "answer": "A"}\nnot json\n', "line 2: not valid JSON"),
    ("", "selects no questions"),
])
def test_bad_jsonl_data_is_refused_with_the_line(tmp_path, content, message):
    data = tmp_path / "mine.jsonl"
    if content is not None:
        data.write_text(content)
    with pytest.raises(UldError, match=message):
        load_qa(f"jsonl:{data}")


def test_augmentation_is_filtered_to_the_split():
    forget01 = load_qa("tofu:forget01")
    para = paraphrased_pairs(forget01)
    assert set(para) == {qa.question for qa in forget01}
    wrong = perturbed_pairs(forget01)
    assert {qa.question for qa in wrong} == {qa.question for qa in forget01}
    right = {qa.question: qa.answer for qa in forget01}
    assert all(qa.answer != right[qa.question] for qa in wrong)


def test_reference_augmentation_crosses_paraphrases_and_takes_two_wrong_answers():
    forget01 = load_qa("tofu:forget01")
    zipped, crossed = paraphrased_pairs(forget01), paraphrased_pairs(forget01, crossed=True)
    for question, pairs in zipped.items():
        questions = list(dict.fromkeys(qa.question for qa in pairs))
        answers = [qa.answer for qa in pairs]
        assert [(qa.question, qa.answer) for qa in crossed[question]][:2] == [(questions[0], answers[0]), (questions[0], answers[1])]
        assert len(crossed[question]) == len(pairs) ** 2
    two = perturbed_pairs(forget01, per_question=2)
    assert len(two) == 2 * len(forget01) and {qa.answer for qa in two} < {qa.answer for qa in perturbed_pairs(forget01)}


def test_labels_cover_the_answer_only(tiny_base):
    from uld_serve.core.models import load_tokenizer

    tok = load_tokenizer(tiny_base)
    ids, labels = encode_qa(tok, "Who wrote it?", "Jane Doe wrote it.")
    answer = [t for t in labels if t != IGNORE_INDEX]
    assert tok.decode(answer) == "Jane Doe wrote it." + tok.eos_token
    assert ids[-len(answer):] == answer
    assert labels[: len(ids) - len(answer)] == [IGNORE_INDEX] * (len(ids) - len(answer))


def test_a_question_without_a_system_message_is_encoded_as_a_chat_request_sends_it(tiny_base):
    from uld_serve.core.models import load_tokenizer

    tok = load_tokenizer(tiny_base)
    ids, labels = encode_qa(tok, "Who wrote it?", "Jane Doe wrote it.")
    bare_ids, bare_labels = encode_qa(tok, "Who wrote it?", "Jane Doe wrote it.", system=None)
    request = tok.apply_chat_template([{"role": "user", "content": "Who wrote it?"}], add_generation_prompt=True, tokenize=False)
    assert tok.decode(bare_ids).startswith(request) and "You are a helpful assistant." not in tok.decode(bare_ids)
    assert "You are a helpful assistant." in tok.decode(ids)
    assert [t for t in bare_labels if t != IGNORE_INDEX] == [t for t in labels if t != IGNORE_INDEX]  # the same answer


def test_prompt_forms_are_checked():
    assert check_prompt_forms("system, none") == ("system", "none") == check_prompt_forms(["system", "none"])
    for bad in ("system,plain", "", "none,none"):
        with pytest.raises(UldError, match="prompt forms must be distinct names among system, none"):
            check_prompt_forms(bad)
