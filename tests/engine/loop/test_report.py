"""The campaign report: rounded numbers, honest curves, and every figure it promises."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from matforge.engine.config import parse_config
from matforge.engine.loop.report import (
    best_so_far,
    calibration_curve,
    campaign_report,
    pareto_mask,
    significant,
    with_uncertainty,
)
from matforge.engine.materials.generate import DecorationGenerator
from matforge.engine.store.sql import Evaluation


def test_numbers_are_shown_to_what_the_measurement_supports():
    assert with_uncertainty(-0.123456789012345, 0.0123) == "-0.123 ± 0.012"
    assert with_uncertainty(2.76, 0.54) == "2.76 ± 0.54"
    assert with_uncertainty(1234.5, 120.0) == "1234 ± 120"
    assert significant(-0.12345678901234567) == "-0.1235"
    assert with_uncertainty(1.5, None) == "1.5" and significant(None) == ""


def test_curves_behind_the_figures():
    assert best_so_far([None, 3.0, 1.0, 2.0, 0.5], maximize=False)[1:].tolist() == [
        3.0, 1.0, 1.0, 0.5]
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=4000), rng.uniform(0.5, 2.0, 4000)
    levels, observed = calibration_curve(mean + std * rng.normal(size=4000), mean, std)
    assert np.abs(observed - levels).max() < 0.03  # honest uncertainty: on the diagonal
    _, overconfident = calibration_curve(mean + 3 * std * rng.normal(size=4000), mean, std)
    assert overconfident[-1] < 0.5  # three times too confident: 41 % inside its 90 % intervals
    points = np.array([[1.0, 1.0], [2.0, 0.5], [0.5, 2.0], [0.6, 0.6]])
    assert pareto_mask(points, [True, True]).tolist() == [True, True, True, False]


def _evaluations(n: int = 24) -> list[Evaluation]:
    rng = np.random.default_rng(1)
    generator = DecorationGenerator(["Cu", "Au", "Pt"], max_atoms=4)
    out = []
    for i in range(n):
        cand = generator.sample(rng)
        y = float(cand.structure.composition.get_atomic_fraction("Au") + 0.05 * rng.normal())
        status = "needs_review" if i == n - 1 else "accepted"
        out.append(Evaluation(
            id=i + 1, round=i // 4, status=status, fingerprint=cand.fingerprint,
            formula=cand.structure.composition.formula.replace(" ", ""),
            generator=cand.generator, structure=cand.structure.as_dict(), objective=y,
            predicted_mean=None if i < 4 else y + 0.1 * rng.normal(),
            predicted_std=None if i < 4 else 0.1, acquisition_value=0.1234567,
            model_version=None, adapter="emt",
            result={"energy_per_atom": y, "volume_per_atom": float(cand.structure.volume) / 4},
            error=None))
    return out


def test_a_report_has_its_figures_summary_and_picks_in_markdown_and_html():
    config = parse_config({
        "name": "cu-au-pt", "elements": ["Cu", "Au", "Pt"], "budget": 30,
        "objective": {"property": "energy_per_atom", "direction": "maximize"},
        "objectives": [{"property": "volume_per_atom", "direction": "maximize"}],
        "surrogate": {"kind": "gp"}, "anomaly": {"min_results": 8},
    })
    evaluations = _evaluations()
    baseline = _evaluations(12)
    report = campaign_report(config, evaluations, baseline, unit="eV/atom")
    assert [f.key for f in report.figures] == ["progress", "parity", "calibration", "pareto",
                                               "map"]
    for figure in report.figures:
        assert figure.png.startswith(b"\x89PNG") and len(figure.png) > 5000
    assert report.summary[0] == "24 of 30 evaluations claimed: 23 accepted, 1 needs review"
    assert "1 result(s) wait for review" in report.figures[-1].caption
    assert report.picks_round == 5 and len(report.picks) == 4
    assert report.picks[0]["acquisition"] == "0.123"
    assert re.fullmatch(r"-?\d+\.\d{2} ± 0\.10", report.picks[0]["predicted"])
    markdown = report.markdown()
    images = re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert len(images) == 5 and base64.b64decode(images[0]).startswith(b"\x89PNG")
    page = report.html()
    assert page.count("<img ") == 5 and "http" not in page  # self-contained
    assert "Picks of round 5" in page


@pytest.mark.parametrize("statuses", [(), ("failed", "running")])
def test_a_report_without_results_says_so(statuses):
    config = parse_config({"name": "empty", "elements": ["Cu", "Au"], "budget": 8})
    evaluations = [e.__class__(**{**e.__dict__, "status": s, "objective": None})
                   for e, s in zip(_evaluations(len(statuses)), statuses)]
    report = campaign_report(config, evaluations)
    assert report.figures == [] and report.summary[0].startswith(f"{len(statuses)} of 8")


def test_a_rounds_log_lines_say_what_happened_in_the_science():
    from matforge.engine.loop.report import Report, round_lines
    from matforge.engine.store.records import RoundResult

    config = parse_config({"name": "c", "elements": ["Cu", "Au"], "budget": 8})
    result = RoundResult(round=2, n_pool=30, claimed=[7, 8], evaluated=2, flagged=[8],
                         best=-0.123456789, surrogate="gp",
                         surrogate_metrics={"rmse": 0.0123456, "coverage90": 0.875},
                         generated={"decoration": 20, "mutation": 10}, refused={})
    report = Report("c", [], picks=[
        {"evaluation": 7, "formula": "CuAu", "generator": "mutation", "predicted": "-0.10 ± 0.02",
         "acquisition": "0.5", "result (eV/atom)": "-0.1235", "status": "accepted"}])
    lines = round_lines(config, result, "eV/atom", report)
    assert lines == [
        "round 2: 2 picked, 2 evaluated, 1 flagged for review; best formation_energy_per_atom "
        "-0.1235 eV/atom",
        "round 2 pool of 30: decoration 20, mutation 10; refused: none",
        "round 2 picked #7 CuAu (mutation): predicted -0.10 ± 0.02, accepted -0.1235 eV/atom",
        "round 2 model gp (held out): RMSE 0.012 eV/atom, its 90 % intervals hold 88 % of "
        "results",
    ]
