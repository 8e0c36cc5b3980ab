import pytest

from uld_serve.errors import UldError
from uld_serve.tofu import IGNORE_INDEX, encode_qa, load_qa, paraphrased_pairs, perturbed_pairs


def test_specs_select_the_documented_rows():
    full = load_qa("tofu:full")
    assert len(full) == 4000
    assert load_qa("tofu:forget10") == full[3600:]
    assert load_qa("tofu:retain90") == full[:3600]
    assert load_qa("tofu:forget01") == full[-40:]
    assert load_qa("tofu-mini:target") == full[:400] + full[3600:]
    assert load_qa("tofu-mini:retain") == full[:400]


@pytest.mark.parametrize("spec", ["tofu:nope", "wiki:forget10", "tofu:forget10[a:b]", "tofu:forget10[5:5]"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(UldError):
        load_qa(spec)


def test_augmentation_is_filtered_to_the_split():
    forget01 = load_qa("tofu:forget01")
    para = paraphrased_pairs(forget01)
    assert set(para) == {qa.question for qa in forget01}
    wrong = perturbed_pairs(forget01)
    assert {qa.question for qa in wrong} == {qa.question for qa in forget01}
    right = {qa.question: qa.answer for qa in forget01}
    assert all(qa.answer != right[qa.question] for qa in wrong)


def test_labels_cover_the_answer_only(tiny_base):
    from uld_serve.models import load_tokenizer

    tok = load_tokenizer(tiny_base)
    ids, labels = encode_qa(tok, "Who wrote it?", "Jane Doe wrote it.")
    answer = [t for t in labels if t != IGNORE_INDEX]
    assert tok.decode(answer) == "Jane Doe wrote it." + tok.eos_token
    assert ids[-len(answer):] == answer
    assert labels[: len(ids) - len(answer)] == [IGNORE_INDEX] * (len(ids) - len(answer))
