"""Numbers with their uncertainty (no figure is compared or gated without its error bar): Wilson intervals, paired top-1 comparisons, the gate's three outcomes,
median and ratio intervals, and per-image results through report.json."""

from __future__ import annotations

import json

import pytest

from mmdeploy.errors import MMDeployError
from mmdeploy.report import build_report, compare_reports, format_gate, load_report, write_report
from mmdeploy.results import Point
from mmdeploy.stats import (
    Top1,
    at_least,
    compare_top1,
    median_interval,
    pack_correct,
    ratio_interval,
    top1_interval,
    unpack_correct,
    wilson,
)


# -- Wilson -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [  # 95% Wilson score intervals as published (e.g. Newcombe 1998, Table I; Brown, Cai & DasGupta 2001)
        (81, 263, 0.2553, 0.3662),  # Newcombe's example 81/263
        (15, 148, 0.0624, 0.1605),  # Newcombe's example 15/148
        (0, 20, 0.0, 0.1611),  # Newcombe's example 0/20
        (1, 29, 0.0061, 0.1718),  # Newcombe's example 1/29
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_matches_published_values(k, n, low, high):
    assert wilson(k, n) == pytest.approx((low, high), abs=1e-4)


def test_top1_interval_is_in_percent_and_about_1_4_pt_near_88_on_2000_images():
    low, high = top1_interval(88.0, 2000)
    assert (low, high) == pytest.approx((86.50, 89.35), abs=0.01)
    assert 2.7 < high - low < 3.0  # about +-1.4 pt: 2000 images cannot tell apart two models 1 pt apart


# -- per-image results --------------------------------------------------------------------------------
def test_packed_results_round_trip_and_refuse_damage():
    flags = [i % 3 == 0 for i in range(10)]
    text = pack_correct(flags)
    value = unpack_correct(text, 10)
    assert [bool(value >> i & 1) for i in range(10)] == flags
    with pytest.raises(MMDeployError, match="bits for 17 images"):
        unpack_correct(text, 17)
    with pytest.raises(MMDeployError, match="past the last image"):
        unpack_correct(pack_correct([True] * 10), 9)
    with pytest.raises(MMDeployError, match="base64"):
        unpack_correct("not base64!", 10)
    with pytest.raises(MMDeployError, match="malformed"):
        unpack_correct(12, 10)


def _top1(correct: list[bool], image_set: str = "val") -> Top1:
    return Top1(100 * sum(correct) / len(correct), len(correct), pack_correct(correct), image_set)


def _results(n: int, right: int, flip: tuple[int, ...] = ()) -> list[bool]:
    """The first ``right`` of ``n`` images right, then the images in ``flip`` flipped."""
    flags = [i < right for i in range(n)]
    for i in flip:
        flags[i] = not flags[i]
    return flags


# -- paired comparisons ---------------------------------------------------------------------------------
def test_paired_interval_on_newcombes_example_table():
    # A paired table as in Newcombe (1998): 12 both right, 9 first only, 2 second only, 4 neither; method 10 (Wilson
    # limits combined with the continuity-corrected phi) gives 0.019 to 0.461 for the difference 7/27.
    ref = [True] * 12 + [False] * 9 + [True] * 2 + [False] * 4
    cand = [True] * 12 + [True] * 9 + [False] * 2 + [False] * 4
    cmp = compare_top1(_top1(ref), _top1(cand), 0.0)
    assert cmp.difference == pytest.approx(100 * 7 / 27)
    assert (cmp.low, cmp.high) == pytest.approx((1.92, 46.15), abs=0.01)
    assert cmp.discordant == (2, 9)


def test_identical_results_are_within():
    a = _top1(_results(2000, 1760))
    cmp = compare_top1(a, a, 0.3)
    assert cmp.verdict == "within" and cmp.paired and cmp.difference == 0 and cmp.discordant == (0, 0)
    assert cmp.low > -0.3 and cmp.images_needed is None


def test_one_flipped_image_is_within():
    ref = _top1(_results(2000, 1760))
    cmp = compare_top1(ref, _top1(_results(2000, 1760, flip=(0,))), 0.3)
    assert cmp.verdict == "within" and cmp.discordant == (1, 0) and cmp.difference == pytest.approx(-0.05)


def test_a_real_five_point_drop_on_enough_images_is_worse():
    # 88% -> 83% on 2,000 images: 100 images lost, 0.3 pt allowed
    cmp = compare_top1(_top1(_results(2000, 1760)), _top1(_results(2000, 1660)), 0.3)
    assert cmp.verdict == "worse" and cmp.high < -0.3 and cmp.difference == pytest.approx(-5.0)
    assert cmp.images_needed is None


def test_a_small_sample_is_undecided_with_the_images_that_would_decide_it():
    # 1 pt lost on 100 images (one image): nothing can be said about a 0.5 pt limit
    cmp = compare_top1(_top1(_results(100, 88)), _top1(_results(100, 87)), 0.5)
    assert cmp.verdict == "undecided" and cmp.low < -0.5 < cmp.high
    # 1.96^2 * (1/100 - 0.01^2) / (0.01 - 0.005)^2
    assert cmp.images_needed == 1522
    assert "~1522 images would decide it" in cmp.phrase()


def test_pairing_beats_independent_samples_and_the_fallback_says_so():
    ref, cand = _results(2000, 1760), _results(2000, 1750)
    paired = compare_top1(_top1(ref), _top1(cand), 0.3)
    unpaired = compare_top1(_top1(ref), _top1(cand, image_set="other"), 0.3)  # not known to be the same images
    assert paired.paired and not unpaired.paired
    assert paired.difference == pytest.approx(unpaired.difference)
    assert unpaired.high - unpaired.low > 3 * (paired.high - paired.low)
    assert "unpaired (no per-image results)" in unpaired.phrase()
    bare = compare_top1(Top1(88.0, 2000), Top1(87.5, 2000), 0.3)  # counts only (an old bundle)
    assert not bare.paired and bare.verdict == "undecided"
    edited = Top1(93.0, 2000, _top1(ref).correct, "val")  # a baseline whose top-1 was edited by hand: its bits no longer say it
    assert not compare_top1(edited, _top1(ref), 0.3).paired


def test_at_least_a_minimum_accuracy():
    assert at_least(Top1(90.0, 10_000), 89.0).verdict == "within"
    assert at_least(Top1(85.0, 10_000), 89.0).verdict == "worse"
    undecided = at_least(Top1(89.2, 1000), 89.0)
    assert undecided.verdict == "undecided" and undecided.images_needed > 1000


# -- latency --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "low_rank", "high_rank"), [(30, 10, 21), (50, 18, 33), (100, 40, 61), (6, 1, 6)])
def test_median_interval_uses_the_binomial_order_statistics(n, low_rank, high_rank):
    samples = [float(i) for i in range(1, n + 1)]  # the i-th smallest is i
    assert median_interval(list(reversed(samples))) == (low_rank, high_rank)


def test_ratio_interval_is_crosswise():
    assert ratio_interval((9.0, 11.0), (1.0, 2.0)) == (4.5, 11.0)
    assert ratio_interval(None, (1.0, 2.0)) is None


# -- the gate's three outcomes, paired across two reports -------------------------------------------------------
def _point(label: str, top1_correct: list[bool], latency: float, p50_ci=None) -> Point:
    size, engine, precision = label.split("/")
    n = len(top1_correct)
    extra = {"images": n, "top1_ci": list(top1_interval(100 * sum(top1_correct) / n, n)), "image_set": "val",
             "correct": pack_correct(top1_correct)}
    if p50_ci:
        extra["p50_ci_ms"] = list(p50_ci)
    return Point(int(size), engine, precision, 1, 100 * sum(top1_correct) / n, latency, extra=extra)


def _plane(fast: list[bool], n: int = 4000) -> list[Point]:
    return [_point("32/torch/fp32", _results(n, round(0.88 * n)), 10.0, (9.5, 10.5)),
            _point("32/ort/fp32", fast, 2.0, (1.9, 2.1))]


def _gate(new_fast: list[bool], undecided: str = "pass", n: int = 4000):
    baseline = build_report(_plane(_results(n, round(0.88 * n)), n), batch=1, environment={}, training_size=32)
    new = build_report(_plane(new_fast, n), batch=1, environment={}, training_size=32)
    return compare_reports(new, baseline, max_acc_drop=0.3, max_latency_regress=0.15, undecided=undecided)


def test_gate_passes_a_change_decidedly_inside_the_limit():
    result = _gate(_results(4000, 3520, flip=(0,)))  # one image lost: -0.025 pt
    assert result.passed and result.findings == []


def test_gate_fails_a_drop_that_is_significant_and_beyond_the_limit():
    result = _gate(_results(4000, 3320))  # 88% -> 83%
    assert not result.passed
    (finding,) = result.failures
    assert finding.kind == "accuracy-drop" and finding.comparison.verdict == "worse" and finding.comparison.paired
    assert "decidedly more than 0.3 pt lost" in format_gate(result)


def test_gate_notes_a_drop_inside_the_noise_and_fails_it_only_when_strict():
    drop = _results(4000, 3500)  # 88% -> 87.5%: 20 images of 4,000; the interval straddles -0.3
    result = _gate(drop)
    assert result.passed
    (finding,) = result.findings
    assert finding.kind == "accuracy-undecided" and not finding.fails
    assert finding.comparison.images_needed > 4000
    text = format_gate(result)
    assert "inside the noise" in text and "images would decide it" in text and "1 accuracy change undecided" in text
    strict = _gate(drop, undecided="fail")
    assert not strict.passed and strict.failures[0].kind == "accuracy-undecided"
    with pytest.raises(MMDeployError, match="--undecided"):
        _gate(drop, undecided="maybe")


# -- report.json -------------------------------------------------------------------------------------------------
def test_report_json_keeps_per_image_results_apart_and_reads_them_back(tmp_path):
    same = build_report(_plane(_results(4000, 3520)), batch=1, environment={}, training_size=32)
    assert same.speedup.best.engine == "ort" and same.speedup.comparison.verdict == "within"
    assert same.speedup.speedup_ci == pytest.approx([9.5 / 2.1, 10.5 / 1.9])  # the two p50 intervals crosswise
    report = build_report(_plane(_results(4000, 3500)), batch=1, environment={}, training_size=32)
    path = write_report(report, tmp_path)["json"]
    data = json.loads(path.read_text())
    assert data["schema_version"] == 2
    assert all("correct" not in p["extra"] for p in data["points"])  # the points stay readable
    assert set(data["per_image"]) == {"32/torch/fp32", "32/ort/fp32"}
    assert data["points"][0]["extra"]["top1_ci"] and data["points"][0]["extra"]["images"] == 4000
    assert data["speedup"]["speedup_ci"] == [1.0, 1.0]  # the reference is its own best
    # 87.5% vs 88%, paired: undecided for 0.5 pt, so the fast point is named as undecided and the reference is the best
    assert data["speedup"]["best"]["engine"] == "torch" and data["speedup"]["undecided"]["engine"] == "ort"
    loaded = load_report(path)
    assert loaded.points[1].extra["correct"] == report.points[1].extra["correct"]
    assert loaded.speedup.undecided_comparison.verdict == "undecided"
    data["per_image"]["32/ort/fp32"]["correct"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(MMDeployError, match="per_image"):
        load_report(path)


def test_a_version_1_report_still_loads_and_gates_on_the_bare_numbers(tmp_path):
    baseline = build_report([Point(32, "torch", "fp32", 1, 88.0, 10.0), Point(32, "ort", "fp32", 1, 88.0, 2.0)],
                            batch=1, environment={}, training_size=32)
    path = write_report(baseline, tmp_path)["json"]
    data = json.loads(path.read_text())
    data["schema_version"] = 1
    for key in ("per_image",):
        data.pop(key)
    path.write_text(json.dumps(data))
    old = load_report(path)
    new = build_report([Point(32, "torch", "fp32", 1, 88.0, 10.0), Point(32, "ort", "fp32", 1, 87.0, 2.0)],
                       batch=1, environment={}, training_size=32)
    result = compare_reports(new, old, 0.3, 0.15)
    assert not result.passed and "compared without intervals" in result.failures[0].message
