import json
import math

import numpy as np
import pytest
from rouge_score import rouge_scorer
from scipy import stats

from uld_serve.eval import metrics as m
from uld_serve.eval.summary import UTILITY, first_items, recompute


def test_truth_ratio_by_hand():
    # correct avg loss 1 -> P = e^-1; wrong options avg losses 2 and 4 -> mean 3 -> P = e^-3
    ratios = m.truth_ratios([1.0], [[2.0, 4.0]])
    assert ratios[0] == pytest.approx(math.exp(-3) / math.exp(-1))
    assert m.truth_ratio_aggregate([0.5, 2.0], "closer_to_1_better") == pytest.approx((0.5 + 0.5) / 2)
    assert m.truth_ratio_aggregate([0.25, 2.0], "true_better") == pytest.approx((0.75 + 0.0) / 2)


def test_normalised_probability_by_hand():
    assert m.normalised_probabilities([0.6], [[0.1, 0.2, 0.1]])[0] == pytest.approx(0.6 / 1.0)


def test_auc_with_ties_by_hand():
    # pairs (neg, pos): (1,2) win, (1,1) tie, (3,2) loss, (3,1) loss -> (1 + 0.5) / 4
    assert m.roc_auc([1, 3, 2, 1], [0, 0, 1, 1]) == pytest.approx(0.375)
    assert m.mia_auc([5.0, 6.0], [1.0, 2.0]) == 0.0  # forget less likely than holdout


def test_min_k_by_hand():
    assert m.min_k_score([-1.0, -5.0, -3.0, -2.0, -4.0], k=0.4) == pytest.approx(4.5)
    assert m.min_k_score([-1.0, -2.0], k=0.4) == pytest.approx(2.0)  # at least one token
    assert m.min_k_score([], k=0.4) == 0.0


def test_privleak_by_hand():
    assert m.privleak(0.9, 0.5) == pytest.approx((0.1 - 0.5) / 0.5 * 100)


def test_extraction_strength_by_hand():
    assert m.extraction_strength([True, True, True, True]) == 1.0
    assert m.extraction_strength([False, True, True, True]) == pytest.approx(0.75)
    assert m.extraction_strength([True, False, True, False]) == pytest.approx(0.25)  # open-unlearning's loop ends at n-1


def test_rouge_recall_by_hand():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    s = m.rouge_scores(scorer, "the cat sat on the mat", "the cat sat")
    assert s["rougeL_recall"] == pytest.approx(3 / 6)
    assert s["rouge1_recall"] == pytest.approx(3 / 6)


def test_mean_rouge_l_recall_uses_the_stemmed_scorer():
    # "cats" stems to "cat": 2 of 3 words in order, then a perfect match
    assert m.mean_rouge_l_recall(["the cat sat", "a dog"], ["the cats", "a dog"]) == pytest.approx((2 / 3 + 1) / 2)


def synthetic_logs(seed, n=30):
    """A TOFU_EVAL.json in open-unlearning's layout with random per-sample values."""
    rng = np.random.default_rng(seed)

    def prob(options=None):
        def one():
            loss = float(rng.uniform(0.1, 4))
            return loss
        out = {}
        for i in range(n):
            if options:
                losses = [one() for _ in range(options)]
                out[str(i)] = {"prob": [math.exp(-x) for x in losses], "avg_loss": losses}
            else:
                loss = one()
                out[str(i)] = {"prob": math.exp(-loss), "avg_loss": loss}
        return {"agg_value": -1, "value_by_index": out}

    def rouge():
        return {"agg_value": -1, "value_by_index": {str(i): {"rougeL_recall": float(rng.uniform()), "rouge1_recall": 0.0,
                                                               "rougeL_f1": 0.0} for i in range(n)}}

    logs = {}
    for prefix, para, n_wrong in (("forget", True, 5), ("retain", True, 5), ("ra", False, 3), ("wf", False, 3)):
        logs[f"{prefix}_Q_A_Prob"] = prob()
        if para:
            logs[f"{prefix}_Q_A_PARA_Prob"] = prob()
        logs[f"{prefix}_Q_A_PERT_Prob"] = prob(n_wrong)
        logs[f"{prefix}_Q_A_ROUGE"] = rouge()
    logs["mia_min_k"] = {side: {"value_by_index": {str(i): {"score": float(rng.uniform(0, 3))} for i in range(n)}}
                         for side in ("forget", "holdout")}
    return json.loads(json.dumps(logs))  # the JSON round trip a file makes


def test_recompute_matches_independent_statement():
    logs, retain = synthetic_logs(0), synthetic_logs(1)
    recompute(retain)
    summary = recompute(logs, retain)

    def vals(name, field):
        return [v[field] for v in logs[name]["value_by_index"].values()]

    def tr(correct, wrong):
        c = np.exp(-np.array(vals(correct, "avg_loss")))
        w = np.exp(-np.array(vals(wrong, "avg_loss")).mean(axis=1))
        return w / (c + 1e-10)

    forget_tr = tr("forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob")
    retain_forget_tr = [v["score"] for v in retain["forget_truth_ratio"]["value_by_index"].values()]
    expected = {
        "forget_truth_ratio": np.mean(np.minimum(forget_tr, 1 / (forget_tr + 1e-10))),
        "forget_quality": stats.ks_2samp(forget_tr, retain_forget_tr).pvalue,
        "forget_Q_A_PERT_Prob": np.mean(np.array(vals("forget_Q_A_PERT_Prob", "prob")).mean(axis=1)),
        "retain_Truth_Ratio": np.mean(np.maximum(0, 1 - tr("retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob"))),
        "ra_Truth_Ratio": np.mean(np.maximum(0, 1 - tr("ra_Q_A_Prob", "ra_Q_A_PERT_Prob"))),
    }
    for p in ("ra", "wf"):
        c, w = np.array(vals(f"{p}_Q_A_Prob", "prob")), np.array(vals(f"{p}_Q_A_PERT_Prob", "prob")).sum(axis=1)
        expected[f"{p}_Q_A_Prob_normalised"] = np.mean(c / (c + w + 1e-10))
    holdout = [v["score"] for v in logs["mia_min_k"]["holdout"]["value_by_index"].values()]
    forget_auc = np.mean([[1.0 if h > f else 0.5 if h == f else 0.0 for h in holdout]
                          for f in [v["score"] for v in logs["mia_min_k"]["forget"]["value_by_index"].values()]])
    expected["mia_min_k"] = forget_auc
    retain_auc = retain["mia_min_k"]["agg_value"]
    expected["privleak"] = ((1 - forget_auc) - (1 - retain_auc)) / (1 - retain_auc + 1e-10) * 100
    for name, value in expected.items():
        assert summary[name] == pytest.approx(value, rel=1e-9), name
    assert summary["model_utility"] == pytest.approx(len(UTILITY) / sum(1 / summary[n] for n in UTILITY), rel=1e-9)


def test_first_items_equal_logs_of_only_those_items():
    """`uld eval summarize --limit 300` (the reference code's MAX_NUM): every aggregate as if only
    the first n items of each split had been evaluated, in both logs."""
    logs, retain = synthetic_logs(3), synthetic_logs(4)
    recompute(retain)
    limited = recompute(first_items(logs, 12), first_items(retain, 12))

    def only(full, n):
        out = json.loads(json.dumps(full))
        for entry in out.values():
            logs_of_entry = [entry] if "value_by_index" in entry else [entry[side] for side in ("forget", "holdout") if side in entry]
            for log in logs_of_entry:
                for k in [k for k in log["value_by_index"] if int(k) >= n]:
                    del log["value_by_index"][k]
        return out

    small_retain = only(retain, 12)
    assert limited == pytest.approx(recompute(only(logs, 12), small_retain), rel=1e-12)
    assert limited["forget_quality"] != pytest.approx(recompute(logs, retain)["forget_quality"])
    assert len(first_items(logs, 12)["mia_min_k"]["holdout"]["value_by_index"]) == 12


def test_forget_quality_is_none_without_reference():
    summary = recompute(synthetic_logs(2))
    assert summary["forget_quality"] is None
    assert summary["privleak"] == pytest.approx(m.privleak(summary["mia_min_k"], 0.5))
