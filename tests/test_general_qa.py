"""benchmarks/general_qa.py keeps retain data about real writers apart from TOFU's real-authors
split, which measures model utility: a pair that touches one of its items is dropped."""
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
