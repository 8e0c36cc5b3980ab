"""benchmarks/tune_assistant.py's rule: the alpha in the middle of the run of alphas around the
grid's peak where validation forget quality stays at or above the aim, which is what forget10's
alpha is carried over from; and the choice among candidates."""
import json
import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from tune_assistant import FQ_AIM, choose, middle_of_aim_run  # noqa: E402


def plateau(low, high, inside=0.4, outside=0.01):
    return lambda a: inside if low <= a <= high else outside


def test_the_alpha_is_the_middle_of_the_run_not_its_highest_point():
    def lopsided(a):  # highest at the run's upper end, where a few percent more loses the aim
        return 0.39 if 0.5 <= a <= 0.51 else plateau(0.44, 0.51, inside=0.2)(a)

    assert middle_of_aim_run(lopsided, 0.5) == (0.475, [0.44, 0.51])


def test_the_run_stops_at_the_first_step_under_the_aim():
    def dip(a):
        return FQ_AIM / 2 if abs(a - 0.46) < 1e-9 else plateau(0.40, 0.60)(a)

    assert middle_of_aim_run(dip, 0.5) == (0.53, [0.465, 0.6])


def test_a_peak_under_the_aim_is_kept_as_it_is():
    assert middle_of_aim_run(lambda a: FQ_AIM / 2, 0.65) == (0.65, [0.65, 0.65])


def test_the_run_ends_at_alpha_zero():
    assert middle_of_aim_run(plateau(-1, 0.02), 0.0) == (0.01, [0.0, 0.02])


def candidate(fq, general, famous, utility=1.0):
    return {"fq": fq, "greedy_rouge": general, "famous_kept": famous, "utility_prob": utility, "target_utility_prob": 1.0,
            "alpha": 0.5, "probability_alpha": 0.25}


NAMES, AUTHORS = "fast-k15-general-positions-names-e20", "fast-k15-general-positions-names-authors-e20"


def test_the_choice_weighs_famous_names_kept_as_much_as_general_answers():
    results = {NAMES: candidate(0.4, general=0.72, famous=0.50), AUTHORS: candidate(0.3, general=0.70, famous=0.60)}
    choice = choose(results)
    assert (choice["training"], choice["alpha_ratio"]) == (AUTHORS, 2.0)


def test_a_candidate_under_the_forget_quality_aim_or_the_utility_floor_loses_to_one_above():
    results = {NAMES: candidate(FQ_AIM / 2, general=0.9, famous=0.9), AUTHORS: candidate(0.2, general=0.5, famous=0.5)}
    assert choose(results)["training"] == AUTHORS
    results = {NAMES: candidate(0.2, general=0.9, famous=0.9, utility=0.5), AUTHORS: candidate(0.2, general=0.5, famous=0.5)}
    assert choose(results)["training"] == AUTHORS


def test_a_forget10_assistant_of_another_seed_or_epochs_keeps_its_own_folder_and_choice_file(tmp_path):
    from mini_workdir import TUNE, choice_file, choices

    results = {AUTHORS: candidate(0.4, general=0.7, famous=0.8)}
    default, seeded, shorter = choose(results), choose(results, seed=1), choose(results, epochs=10)
    assert len({default["final"], seeded["final"], shorter["final"]}) == 3
    assert shorter["final"].endswith("-e10") and shorter["epochs"] == 10
    files = [choice_file(False), choice_file(False, seed=1), choice_file(False, epochs=10), choice_file(True, epochs=10)]
    assert len(set(files)) == 4
    (tmp_path / TUNE).mkdir()
    for name, choice in zip(files[:3], (default, seeded, shorter)):
        (tmp_path / TUNE / name).write_text(json.dumps(choice))
    assert [c["final"] for c in choices(tmp_path)] == [default["final"]]  # the tables' rows: seed 0, the candidate's epochs
    assert [c["final"] for c in choices(tmp_path, variants=True)] == [default["final"], seeded["final"], shorter["final"]]
