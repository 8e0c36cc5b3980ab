"""open-unlearning's TOFU statistics as pure functions of per-sample values.

Each function states the definition it follows; the per-sample values come from
`scoring.py` (model forward passes and greedy answers).
"""
import zlib

import numpy as np
from scipy import stats

EPS = 1e-10


def mean_over_options(values) -> np.ndarray:
    """Per item, the mean over its answer options (a no-op for single-answer items)."""
    arr = np.asarray(values, dtype=np.float64)
    return arr.mean(axis=tuple(range(1, arr.ndim))) if arr.ndim > 1 else arr


def truth_ratios(correct_avg_losses, wrong_avg_losses) -> np.ndarray:
    """TOFU's truth ratio per item: P(wrong) / P(correct), each P = exp(-mean over options of
    the answer's mean token loss), i.e. geometric means of length-normalised probabilities."""
    correct = np.exp(-mean_over_options(correct_avg_losses))
    wrong = np.exp(-mean_over_options(wrong_avg_losses))
    return wrong / (correct + EPS)


def truth_ratio_aggregate(ratios, aggregator: str) -> float:
    ratios = np.asarray(ratios, dtype=np.float64)
    if aggregator == "closer_to_1_better":  # forget data: wrong and correct equally likely is best
        return float(np.mean(np.minimum(ratios, 1 / (ratios + EPS))))
    if aggregator == "true_better":  # other data: the lower the ratio, the better
        return float(np.mean(np.maximum(0, 1 - ratios)))
    raise ValueError(f"unknown truth-ratio aggregator {aggregator!r}")


def normalised_probabilities(correct_probs, wrong_probs) -> np.ndarray:
    """P(correct) / (P(correct) + sum of P(wrong options)), per item."""
    correct = np.asarray(correct_probs, dtype=np.float64)
    wrong = np.asarray(wrong_probs, dtype=np.float64)
    wrong = wrong.sum(axis=tuple(range(1, wrong.ndim))) if wrong.ndim > 1 else wrong
    return correct / (correct + wrong + EPS)


def ks_pvalue(sample, reference) -> float:
    """Forget quality: the two-sample KS test p-value of two truth-ratio samples."""
    return float(stats.ks_2samp(np.asarray(sample), np.asarray(reference)).pvalue)


def harmonic_mean(values) -> float:
    return float(stats.hmean(np.asarray(values, dtype=np.float64)))


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve, ties counted half (the Mann-Whitney statistic, as sklearn)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    ranks = stats.rankdata(scores)
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mia_auc(forget_scores, holdout_scores) -> float:
    """open-unlearning's convention: holdout labelled 1, scores signed like a loss, so the
    AUC is 1 when forget data is much more likely than holdout data."""
    scores = list(forget_scores) + list(holdout_scores)
    labels = [0] * len(forget_scores) + [1] * len(holdout_scores)
    return roc_auc(scores, labels)


def min_k_score(token_logprobs, k: float = 0.4) -> float:
    """Min-k% prob attack: minus the mean of the lowest k fraction of answer-token log-probs."""
    lp = np.asarray(token_logprobs, dtype=np.float64)
    if lp.size == 0:
        return 0.0
    n = max(1, int(len(lp) * k))
    return float(-np.mean(np.sort(lp)[:n]))


def zlib_score(avg_loss: float, text: str) -> float:
    return avg_loss / len(zlib.compress(text.encode("utf-8")))


def privleak(auc: float, reference_auc: float) -> float:
    """Relative gap, in percent, between (1 - AUC) and the retain model's (1 - AUC)."""
    score, ref = 1 - auc, 1 - reference_auc
    return (score - ref) / (ref + EPS) * 100


def extraction_strength(matches) -> float:
    """1 - k/n for the smallest k such that greedy predictions match every answer token from k on."""
    n = len(matches)
    if n == 0:
        return 0.0
    k = 0
    for k in range(n):
        if all(matches[k:]):
            break
    return 1 - k / n


def rouge_scorer():
    """open-unlearning's ROUGE setup: rouge1 and rougeL, Porter stemmer."""
    from rouge_score import rouge_scorer as rs

    return rs.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def mean_rouge_l_recall(ground_truths, generations) -> float:
    """Mean ROUGE-L recall of generations against their ground truths."""
    scorer = rouge_scorer()
    recall = [rouge_scores(scorer, t, g)["rougeL_recall"] for t, g in zip(ground_truths, generations)]
    return sum(recall) / len(recall)


def rouge_scores(scorer, ground_truth: str, generation: str) -> dict:
    s = scorer.score(ground_truth, generation)
    return {"rouge1_recall": s["rouge1"].recall, "rougeL_f1": s["rougeL"].fmeasure, "rougeL_recall": s["rougeL"].recall}
