"""benchmarks/general_qa.py keeps retain data about real writers apart from TOFU's real-authors
split, which measures model utility: a pair that touches one of its items is dropped; so does
famous_names.py's hand-written check."""
import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from general_qa import overlap_check  # noqa: E402

from uld_serve.core.tofu import load_split  # noqa: E402


def test_pairs_touching_the_real_authors_split_are_dropped_and_others_kept():
    rows = load_split("real_authors")
    overlaps = overlap_check(rows)
    assert all(overlaps(row) for row in rows)  # every test item is recognised
    touching = [{"question": "Who wrote Romeo and Juliet?", "answer": "A playwright from England."},  # a quoted title
                {"question": "Who wrote Hamlet?", "answer": "William Shakespeare wrote it around 1600."},  # a test answer
                {"question": "Who created the detective Sherlock Holmes?", "answer": "A Scottish doctor."},  # two words
                {"question": "Is Charlotte's Web a good read?", "answer": "Yes, for children."}]  # a title with an apostrophe
    assert [overlaps(pair) for pair in touching] == [True, True, True, True]
    apart = [{"question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci painted it."},
             {"question": "Who wrote the poem about the ocean at night?", "answer": "Ada Quill, a poet of Maine."},
             # text between two quoted titles, or after a possessive, is no title ("... include 'A' and 'B'")
             {"question": "Who sang and danced in the film?", "answer": "Ginger Rogers sang and danced."}]
    assert [overlaps(pair) for pair in apart] == [False, False, False]


def test_the_famous_people_check_asks_nothing_the_real_authors_split_asks():
    from famous_names import QUESTIONS, famous_questions, names_in

    rows = famous_questions()
    written = QUESTIONS.read_text().splitlines()
    assert len({r["question"] for r in rows}) == len(rows) >= 150  # distinct, and most of the written ones
    assert all(r["question"].endswith("?") and r["names"] and all(r["names"]) for r in rows)
    # an answer that repeats its question must not count as knowing the person
    assert not [r["question"] for r in rows if names_in(r["question"], r["names"])]
    asked = {r["question"] for r in rows}
    assert "Who wrote Hamlet?" in "".join(written) and "Who wrote Hamlet?" not in asked  # Shakespeare is a test answer
    assert "Who painted the Mona Lisa?" in asked
    assert names_in("It was painted by Leonardo da Vinci.", ["Leonardo", "Vinci"])
    assert not names_in("It was painted by a Florentine master.", ["Leonardo", "Vinci"])


def test_the_famous_people_retain_data_asks_about_other_people_than_the_check():
    from famous_names import TRAIN_QUESTIONS, famous_questions

    check, train = famous_questions(), famous_questions(path=TRAIN_QUESTIONS)
    assert len(train) >= 150 and len({r["question"] for r in train}) == len(train)
    assert not {n.lower() for r in check for n in r["names"]} & {n.lower() for r in train for n in r["names"]}
    assert not {r["question"] for r in check} & {r["question"] for r in train}
