"""Every TOFU aggregate, recomputed from the per-sample values of a TOFU_EVAL.json.

The layout and key names are open-unlearning's: {metric: {agg_value, value_by_index:
{idx: {...}}}}, MIA metrics with `forget`/`holdout` sub-logs, and the retain model's logs
as the reference for forget_quality and privleak.
"""
import numpy as np

from . import metrics as m

PROBABILITY = [
    "forget_Q_A_Prob", "forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob",
    "retain_Q_A_Prob", "retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob",
    "ra_Q_A_Prob", "ra_Q_A_PERT_Prob", "wf_Q_A_Prob", "wf_Q_A_PERT_Prob",
]
ROUGE = ["forget_Q_A_ROUGE", "retain_Q_A_ROUGE", "ra_Q_A_ROUGE", "wf_Q_A_ROUGE"]
TRUTH_RATIO = {  # name: (correct, wrong, aggregator)
    "forget_truth_ratio": ("forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "closer_to_1_better"),
    "retain_Truth_Ratio": ("retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob", "true_better"),
    "ra_Truth_Ratio": ("ra_Q_A_Prob", "ra_Q_A_PERT_Prob", "true_better"),
    "wf_Truth_Ratio": ("wf_Q_A_Prob", "wf_Q_A_PERT_Prob", "true_better"),
}
NORMALISED = {"ra_Q_A_Prob_normalised": ("ra_Q_A_Prob", "ra_Q_A_PERT_Prob"), "wf_Q_A_Prob_normalised": ("wf_Q_A_Prob", "wf_Q_A_PERT_Prob")}
UTILITY = [
    "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio",
]
MIA = ["mia_min_k", "mia_loss", "mia_zlib"]
PER_SAMPLE_SCORE = ["extraction_strength"]
HEADLINE = ["forget_quality", "model_utility", "forget_Q_A_ROUGE", "forget_truth_ratio", "forget_Q_A_Prob", "privleak",
            "extraction_strength"]


def first_items(logs: dict, n: int) -> dict:
    """The logs restricted to each split's first n items (indices 0..n-1), derived metrics to be
    recomputed from them: the reference ULD code evaluates only the first 300 items of each
    split (its MAX_NUM), so its forget quality is a KS test over 300 truth ratios, not 400."""
    def trim(entry):
        if not isinstance(entry, dict):
            return entry
        if isinstance(entry.get("value_by_index"), dict):
            return {**entry, "value_by_index": {k: v for k, v in entry["value_by_index"].items() if int(k) < n}}
        return {k: trim(v) for k, v in entry.items()}  # the MIA metrics' forget/holdout sub-logs

    return {name: trim(entry) for name, entry in logs.items()}


def _items(log, field):
    return [(idx, v) for idx, v in log["value_by_index"].items() if v is not None and v.get(field) is not None]


def recompute(logs: dict, retain_logs: dict = None) -> dict:
    """Fill in every derived metric and agg_value of `logs` (in place); return {name: agg_value}."""
    for name in PROBABILITY:
        if name in logs:
            logs[name]["agg_value"] = float(np.mean(m.mean_over_options([v["prob"] for _, v in _items(logs[name], "prob")])))
    for name in ROUGE:
        if name in logs:
            logs[name]["agg_value"] = float(np.mean([v["rougeL_recall"] for _, v in _items(logs[name], "rougeL_recall")]))
    for name, (correct, wrong, aggregator) in TRUTH_RATIO.items():
        if correct in logs and wrong in logs:
            c, w = logs[correct]["value_by_index"], logs[wrong]["value_by_index"]
            keys = [k for k in c if c[k] is not None and w.get(k) is not None]
            ratios = m.truth_ratios([c[k]["avg_loss"] for k in keys], [w[k]["avg_loss"] for k in keys])
            logs[name] = {"value_by_index": {k: {"score": float(r)} for k, r in zip(keys, ratios)}}
        if name in logs:
            scores = [v["score"] for _, v in _items(logs[name], "score")]
            logs[name]["agg_value"] = m.truth_ratio_aggregate(scores, aggregator)
    for name, (correct, wrong) in NORMALISED.items():
        if correct in logs and wrong in logs:
            c, w = logs[correct]["value_by_index"], logs[wrong]["value_by_index"]
            keys = [k for k in c if c[k] is not None and w.get(k) is not None]
            probs = m.normalised_probabilities([c[k]["prob"] for k in keys], [w[k]["prob"] for k in keys])
            logs[name] = {"agg_value": float(np.mean(probs)), "value_by_index": {k: {"prob": float(p)} for k, p in zip(keys, probs)}}
    for name in PER_SAMPLE_SCORE:
        if name in logs:
            logs[name]["agg_value"] = float(np.mean([v["score"] for _, v in _items(logs[name], "score")]))
    for name in MIA:
        if name in logs:
            sides = {side: [v["score"] for v in logs[name][side]["value_by_index"].values()] for side in ("forget", "holdout")}
            for side, scores in sides.items():
                logs[name][side]["agg_value"] = float(np.mean(scores))
            auc = m.mia_auc(sides["forget"], sides["holdout"])
            logs[name]["auc"] = logs[name]["agg_value"] = auc
    if all(name in logs for name in UTILITY):
        logs["model_utility"] = {"agg_value": m.harmonic_mean([logs[n]["agg_value"] for n in UTILITY])}
    if "forget_truth_ratio" in logs:
        reference = (retain_logs or {}).get("forget_truth_ratio")
        logs["forget_quality"] = {
            "agg_value": m.ks_pvalue(
                [v["score"] for v in logs["forget_truth_ratio"]["value_by_index"].values()],
                [v["score"] for v in reference["value_by_index"].values()],
            ) if reference else None
        }
    if "mia_min_k" in logs:
        reference = (retain_logs or {}).get("mia_min_k")
        ref_auc = reference["agg_value"] if reference else 0.5
        logs["privleak"] = {"agg_value": m.privleak(logs["mia_min_k"]["agg_value"], ref_auc)}
    return {name: logs[name]["agg_value"] for name in sorted(logs) if isinstance(logs[name], dict) and "agg_value" in logs[name]}


def markdown_table(rows: dict, columns=HEADLINE) -> str:
    """rows: {model label: summary dict} -> a markdown table of the headline metrics."""
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, summary in rows.items():
        cells = []
        for c in columns:
            v = summary.get(c)
            cells.append("n/a" if v is None else f"{v:.4g}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
