"""The command line end to end on tiny-random, and its answers to bad input."""
import json
import os
import statistics
from pathlib import Path

import pytest
import scipy.stats

from uld_serve.eval.summary import UTILITY

from helpers import FAST, assert_user_error, uld, uld_in_process

@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    base = Path(uld("setup", "--model", "tiny-random").stdout.strip())
    uld("finetune", "--model", base, "--data", "tofu:forget01", "--out", work / "target", *FAST)
    uld("finetune", "--model", base, "--data", "tofu:retain90[:40]", "--out", work / "retain", *FAST)
    uld("train-assistant", "--target", work / "target", "--forget", "tofu:forget01", "--retain", "tofu:retain90[:40]",
        "--out", work / "forget01", *FAST)
    return work


def test_end_to_end(pipeline):
    work = pipeline
    assert (work / "target" / "model.safetensors").exists() and (work / "forget01" / "uld.json").exists()
    small = ["--limit", "4", "--max-new-tokens", "6"]
    uld("eval", "tofu", "--target", work / "retain", "--split", "forget01", "--out", work / "eval-retain", *small)
    out = uld("eval", "tofu", "--target", work / "target", "--forget-set", f"forget01={work / 'forget01'}",
              "--split", "forget01", "--out", work / "eval-uld", "--retain-logs", work / "eval-retain" / "TOFU_EVAL.json", *small)
    summary = json.loads(out.stdout)
    logs = json.loads((work / "eval-uld" / "TOFU_EVAL.json").read_text())
    retain_logs = json.loads((work / "eval-retain" / "TOFU_EVAL.json").read_text())

    def truth_ratios(per_sample):
        return [v["score"] for v in per_sample["forget_truth_ratio"]["value_by_index"].values()]

    # the headline numbers, recomputed here with scipy/statistics from the per-sample logs
    assert summary["forget_quality"] == pytest.approx(scipy.stats.ks_2samp(truth_ratios(logs), truth_ratios(retain_logs)).pvalue)
    assert summary["model_utility"] == pytest.approx(statistics.harmonic_mean([summary[name] for name in UTILITY]))
    assert set(logs["forget_Q_A_PERT_Prob"]["value_by_index"]) == {"0", "1", "2", "3"}
    assert len(logs["forget_Q_A_PERT_Prob"]["value_by_index"]["0"]["prob"]) == 5
    assert "generation" in logs["forget_Q_A_ROUGE"]["value_by_index"]["0"]
    again = uld("eval", "summarize", "--logs", work / "eval-uld" / "TOFU_EVAL.json",
                "--retain-logs", work / "eval-retain" / "TOFU_EVAL.json", "--json")
    assert json.loads(again.stdout) == pytest.approx(summary, rel=1e-12)
    assert (work / "eval-uld" / "summary.md").read_text().startswith("| model |")


@pytest.mark.vllm
def test_eval_answers_from_vllm_equal_the_reference(pipeline):
    work = pipeline
    args = ["eval", "tofu", "--target", work / "target", "--forget-set", f"forget01={work / 'forget01'}", "--split", "forget01",
            "--limit", "3", "--max-new-tokens", "8"]
    uld(*args, "--out", work / "eval-ref")
    uld(*args, "--out", work / "eval-vllm", "--generate-with", "vllm")
    ref, fast = (json.loads((work / d / "TOFU_EVAL.json").read_text()) for d in ("eval-ref", "eval-vllm"))
    assert fast == ref  # greedy fp32: the engine writes the reference's answers token for token


def test_bad_input_gets_one_sentence(pipeline, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    work = pipeline
    assistant = ["train-assistant", "--target", work / "target", "--forget", "tofu:forget01", "--retain", "tofu:retain90[:8]"]
    serve = ["serve", "--target", work / "target", "--registry", tmp_path / "registry.json"]
    cases = [
        (["finetune", "--model", "tiny-random", "--data", "tofu:forget11", "--out", tmp_path / "x"], "unknown TOFU split 'forget11'"),
        (["finetune", "--model", tmp_path / "missing", "--data", "tofu:forget01", "--out", tmp_path / "x"], "nor a model directory"),
        ([*assistant[:4], "tofu:forget01[0:0]", *assistant[5:], "--out", tmp_path / "empty"], "selects no questions"),
        ([*assistant, "--layers", "9", "--out", tmp_path / "deep"], "between 1 and the target's 4 layers"),
        ([*assistant, "--recipe", "reference", "--retain-positions", "prompt", "--out", tmp_path / "pos"],
         "--retain-positions must be one of answer, prompt+answer, all"),
        ([*assistant, "--prompt-forms", "system,plain", "--out", tmp_path / "forms"], "prompt forms must be distinct names"),
        (["eval", "tofu", "--target", work / "retain", "--forget-set", f"f={work / 'forget01'}", "--out", tmp_path / "e"],
         "was trained for base model"),
        (["eval", "tofu", "--target", work / "target", "--forget-set", f"f={tmp_path / 'nowhere'}", "--out", tmp_path / "e"],
         "does not exist"),
        (["eval", "summarize", "--logs", tmp_path / "none.json"], "does not exist"),
        (["eval", "summarize", "--logs", tmp_path / "none.json", "--limit", "0"], "--limit must be at least 1"),
        ([*assistant, "--out", work / "forget01"], "already exists"),
        (["eval", "tofu", "--target", work / "target", "--out", tmp_path / "e", "--scoring", "best"],
         "--scoring must be one of paper, anchored"),
        (["eval", "tofu", "--target", work / "target", "--out", tmp_path / "e", "--device", "tpu"],
         "--device must be auto, cpu, cuda or cuda:N"),
        (["generate", "--target", work / "target", "--input", tmp_path / "in.jsonl", "--output", tmp_path / "o", "--device", "cpu"],
         "--device places the reference engine"),
        ([*serve, "--api-keys-file", tmp_path / "keys.txt"], "keys.txt does not exist"),
        ([*serve, "--api-key", "k1", "--admin-key", "k1"], "both a client key and an admin key"),
        ([*serve, "--forget-set-root", tmp_path / "nowhere"], "is not a directory"),
    ]
    if os.environ["ULD_TEST_DEVICE"] == "cpu":  # the GPU is hidden: asking for one is a user mistake
        cases.append((["finetune", "--model", "tiny-random", "--data", "tofu:forget01", "--out", tmp_path / "g", "--device", "cuda"],
                      "no CUDA GPU is visible"))
    with ThreadPoolExecutor(2) as pool:  # a process of its own: the exit code and stderr the shell sees
        whole = pool.submit(uld, *cases[0][0], check=False)
        bogus = pool.submit(uld, "eval", "tofu", "--bogus", check=False)
        # the rest by the same entry point in this process: a process each spent its time importing
        results = [uld_in_process(*args) for args, _ in cases[1:]]
    for (_, fragment), result in zip(cases, [whole.result(), *results]):
        assert_user_error(result, fragment)
    assert bogus.result().returncode == 2
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no half-written artifact left behind
    assert not any((tmp_path / name).exists() for name in ("empty", "deep", "pos", "forms"))


def test_calibrate_alpha_writes_the_default_and_how_it_was_found(pipeline, tmp_path):
    import shutil

    work = pipeline
    artifact = tmp_path / "forget01"
    shutil.copytree(work / "forget01", artifact)
    out = uld("calibrate-alpha", "--target", work / "target", "--forget-set", artifact, "--unseen", "tofu:retain90[100:104]",
              "--scoring", "paper", "--write", "--forbid", "Zqxv Wqzt", "--forbid", " ")
    result = json.loads(out.stdout)
    manifest = json.loads((artifact / "uld.json").read_text())
    assert manifest["alpha"] == result["alpha"] and manifest["calibration"] == result
    assert result["forbidden"] == ["Zqxv Wqzt"] and result["prompt_forms"] == ["system", "none"]  # blank strings are dropped
    assert result["leaks_by_alpha"] == {str(result["alpha"]): 0} and result["probability_alpha"] == result["alpha"]
    assert result["forget"] == "tofu:forget01" and result["forget_prob"] <= result["unseen_prob"]
    assert_user_error(uld("calibrate-alpha", "--target", work / "target", "--forget-set", artifact, "--unseen", "tofu:nope",
                          check=False), "unknown TOFU split 'nope'")
    assert_user_error(uld("calibrate-alpha", "--target", work / "retain", "--forget-set", artifact,
                          "--unseen", "tofu:retain90[:4]", check=False), "was trained for base model")
    assert json.loads((artifact / "uld.json").read_text()) == manifest  # failed runs leave the artifact as it was


def test_an_empty_uld_home_means_the_default_not_the_current_directory(monkeypatch):
    from uld_serve.core.models import uld_home

    monkeypatch.setenv("ULD_HOME", "")
    assert uld_home() == Path.home() / ".cache" / "uld-serve"
    monkeypatch.setenv("ULD_HOME", "/somewhere/else")
    assert uld_home() == Path("/somewhere/else")
