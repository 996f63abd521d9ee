"""What a campaign has found, in figures and tables: the round artifacts in the Prefect UI
and ``matforge report`` (one self-contained HTML file) are made here, from the store.

Figures (matplotlib, PNG):

- progress: the best objective so far against evaluations, beside the random baseline
  (campaign ``<name>-random``, as ``matforge run --compare-random`` makes it) when there is one;
- parity: the surrogate's prediction at selection time (mean ± std) against the result;
- calibration: the share of results inside the surrogate's central intervals against the
  intervals' nominal level (on the diagonal when its uncertainty is honest);
- Pareto front, with several objectives: the results in the first two objectives;
- map: the explored space, the first two principal components of the standardized
  features, coloured by DBSCAN cluster, flagged results marked.

Numbers are shown to the precision the measurement supports: two significant digits of
the prediction's standard deviation, else four significant digits.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Composition
from scipy.stats import norm
from sklearn.decomposition import PCA

from matforge.engine.config import CampaignConfig
from matforge.engine.loop.anomaly import cluster_labels
from matforge.engine.loop.campaign import anomaly_inputs, anomaly_settings, result_value
from matforge.engine.store.sql import CampaignStore, Evaluation, runtime_url

FINISHED_OK = ("accepted", "needs_review", "rejected")
"""Statuses with a result (a rejected one is kept, out of training)."""


def significant(value: float | None, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits ("" for None, "nan" kept)."""
    if value is None:
        return ""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def with_uncertainty(mean: float | None, std: float | None) -> str:
    """``mean ± std``, the std to two significant digits and the mean to the same place."""
    if mean is None:
        return ""
    if std is None or not math.isfinite(std) or std <= 0:
        return significant(mean)
    place = -int(math.floor(math.log10(std))) + 1  # decimals that keep 2 digits of std
    place = max(place, 0)
    return f"{mean:.{place}f} ± {std:.{place}f}"


def reduced(formula: str) -> str:
    """A stored formula as a chemist writes it (``Ga1P1`` -> ``GaP``)."""
    try:
        return Composition(formula).reduced_formula
    except (ValueError, KeyError):
        return formula


def best_so_far(values: Sequence[float | None], maximize: bool) -> np.ndarray:
    """The running best of ``values`` in order (NaN before the first value)."""
    out, best = [], math.nan
    for v in values:
        if v is not None and math.isfinite(v) and (
                math.isnan(best) or (v > best if maximize else v < best)):
            best = v
        out.append(best)
    return np.array(out, dtype=float)


def calibration_curve(y, mean, std, levels=np.linspace(0.1, 0.9, 9)):
    """(levels, observed): the share of results inside each central interval of the
    surrogate's normal predictive distribution."""
    y, mean, std = (np.asarray(a, dtype=float) for a in (y, mean, std))
    z = np.abs(y - mean) / np.maximum(std, 1e-12)
    observed = np.array([(z <= norm.ppf(0.5 + level / 2)).mean() if len(z) else np.nan
                         for level in levels])
    return np.asarray(levels), observed


def pareto_mask(points: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Which rows of ``points`` (n, k) no other row dominates."""
    signed = np.where(np.asarray(maximize), points, -points)  # larger is better everywhere
    keep = np.ones(len(points), dtype=bool)
    for i, p in enumerate(signed):
        dominated = np.all(signed >= p, axis=1) & np.any(signed > p, axis=1)
        keep[i] = not dominated.any()
    return keep


@dataclass
class Figure:
    key: str
    title: str
    caption: str
    png: bytes

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


@dataclass
class Report:
    """A campaign's report: a summary, its figures and the latest round's picks."""

    title: str
    summary: list[str]
    figures: list[Figure] = field(default_factory=list)
    picks: list[dict] = field(default_factory=list)
    picks_round: int | None = None

    def markdown(self) -> str:
        """Markdown with the figures embedded (data URIs), as a Prefect artifact shows it."""
        lines = [f"# {self.title}", "", *[f"- {s}" for s in self.summary], ""]
        for f in self.figures:
            lines += [f"## {f.title}", "", f"![{f.title}]({f.data_uri()})", "", f.caption, ""]
        if self.picks:
            lines += [f"## Picks of round {self.picks_round}", "", markdown_table(self.picks)]
        return "\n".join(lines)

    def html(self) -> str:
        """One self-contained HTML page (images inline)."""
        e = html.escape
        parts = [f"<h1>{e(self.title)}</h1>", "<ul>",
                 *[f"<li>{e(s)}</li>" for s in self.summary], "</ul>"]
        for f in self.figures:
            parts += [f"<h2>{e(f.title)}</h2>",
                      f'<figure><img alt="{e(f.title)}" src="{f.data_uri()}">'
                      f"<figcaption>{e(f.caption)}</figcaption></figure>"]
        if self.picks:
            head = "".join(f"<th>{e(k)}</th>" for k in self.picks[0])
            rows = "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row.values())
                           + "</tr>" for row in self.picks)
            parts += [f"<h2>Picks of round {self.picks_round}</h2>",
                      f"<table><tr>{head}</tr>{rows}</table>"]
        style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
                 "img{max-width:100%}table{border-collapse:collapse}"
                 "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}"
                 "figcaption{color:#555;font-size:.9em}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(self.title)}"
                f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")


def markdown_table(rows: list[dict]) -> str:
    """``rows`` (dicts with the same keys) as a markdown table."""
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(r[k]).replace("|", "/") for k in keys) + " |" for r in rows]
    return "\n".join(out)


def picks(evaluations: Sequence[Evaluation], round: int, unit: str = "") -> list[dict]:
    """A round's picks: candidate, generator, prediction, acquisition, result, status."""
    rows = []
    for e in sorted((e for e in evaluations if e.round == round), key=lambda e: e.id):
        rows.append({
            "evaluation": e.id,
            "formula": reduced(e.formula),
            "generator": e.generator,
            "predicted": with_uncertainty(e.predicted_mean, e.predicted_std),
            "acquisition": significant(e.acquisition_value, 3),
            f"result{f' ({unit})' if unit else ''}": significant(e.objective),
            "status": e.status,
        })
    return rows


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _axes(title: str, xlabel: str, ylabel: str):
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def campaign_report(config: CampaignConfig, evaluations: Sequence[Evaluation],
                    baseline: Sequence[Evaluation] = (), unit: str = "") -> Report:
    """The report of a campaign from its evaluations (and its random baseline's), the
    objective in ``unit``."""
    prop = config.objective.property
    maximize = config.objective.is_maximized()
    label = f"{prop} ({unit})" if unit else prop
    done = sorted((e for e in evaluations if e.status in FINISHED_OK and e.objective is not None),
                  key=lambda e: e.id)
    counts = {s: sum(e.status == s for e in evaluations)
              for s in ("accepted", "needs_review", "rejected", "failed", "running")}
    best = (max if maximize else min)(done, key=lambda e: e.objective) if done else None
    summary = [
        f"{len(evaluations)} of {config.budget} evaluations claimed: "
        + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items() if n),
        f"objective: {config.objective.direction} {label}",
    ]
    if best is not None:
        summary.append(f"best: {reduced(best.formula)} at {significant(best.objective)} {unit} "
                       f"(evaluation {best.id}, round {best.round})")
    report = Report(f"{config.name}: campaign report", summary)
    if not done:
        return report

    # progress against the random baseline
    fig, ax = _axes("Best so far", "evaluations", label)
    trace = best_so_far([e.objective for e in done], maximize)
    ax.plot(np.arange(1, len(trace) + 1), trace, drawstyle="steps-post", label="campaign")
    base = sorted((e for e in baseline if e.status in FINISHED_OK and e.objective is not None),
                  key=lambda e: e.id)
    if base:
        other = best_so_far([e.objective for e in base], maximize)
        ax.plot(np.arange(1, len(other) + 1), other, drawstyle="steps-post", linestyle="--",
                label="random picks")
    ax.legend()
    report.figures.append(Figure("progress", "Best so far", (
        "The best result after each evaluation" + (", beside random picks from the same "
                                                   "generators" if base else "") + "."),
        _png(fig)))

    predicted = [e for e in done if e.predicted_mean is not None and e.predicted_std is not None]
    if predicted:
        y = np.array([e.objective for e in predicted])
        mu = np.array([e.predicted_mean for e in predicted])
        sd = np.array([e.predicted_std for e in predicted])
        fig, ax = _axes("Predicted against evaluated", f"evaluated {label}", f"predicted {label}")
        ax.errorbar(y, mu, yerr=sd, fmt="o", ms=4, alpha=0.8, capsize=2)
        low, high = float(min(y.min(), mu.min())), float(max(y.max(), mu.max()))
        ax.plot([low, high], [low, high], color="grey", linewidth=1)
        rmse = float(np.sqrt(np.mean((y - mu) ** 2)))
        report.figures.append(Figure("parity", "Predicted against evaluated", (
            f"The surrogate's prediction when each candidate was picked (mean ± one std) "
            f"against its result; RMSE {significant(rmse, 2)} over {len(y)} results."),
            _png(fig)))
        levels, observed = calibration_curve(y, mu, sd)
        fig, ax = _axes("Calibration", "nominal central interval", "results inside")
        ax.plot(levels, observed, "o-", label="surrogate")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=1, label="ideal")
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.legend()
        report.figures.append(Figure("calibration", "Calibration", (
            "The share of results inside the surrogate's central p-intervals against p: "
            f"{significant(float(observed[-1]) * 100, 2)} % inside the 90 % interval."),
            _png(fig)))

    if config.objectives:
        names = [prop, config.objectives[0].property]
        rows = [(e, [result_value(e.result, n) for n in names]) for e in done]
        rows = [(e, v) for e, v in rows if all(x is not None for x in v)]
        if rows:
            points = np.array([v for _, v in rows], dtype=float)
            front = pareto_mask(points, [config.objective.is_maximized(),
                                         config.objectives[0].is_maximized()])
            fig, ax = _axes("Pareto front", names[0], names[1])
            ax.scatter(points[~front, 0], points[~front, 1], s=14, alpha=0.6, label="results")
            order = np.argsort(points[front, 0])
            ax.plot(points[front, 0][order], points[front, 1][order], "o-", color="C3",
                    label="Pareto front")
            ax.legend()
            report.figures.append(Figure("pareto", "Pareto front", (
                f"{int(front.sum())} of {len(points)} results are on the front of "
                f"{names[0]} and {names[1]}."), _png(fig)))

    clustered = [e for e in done if e.status in ("accepted", "needs_review")]
    if len(clustered) >= 3:
        X, residuals = anomaly_inputs(config, clustered)
        labels = cluster_labels(X, residuals, **anomaly_settings(config))
        xy = PCA(n_components=2, random_state=0).fit_transform(np.column_stack(
            [X, np.zeros((len(X), max(0, 2 - X.shape[1])))]))
        flagged = np.array([e.status == "needs_review" for e in clustered])
        fig, ax = _axes("Explored space", "principal component 1", "principal component 2")
        noise = labels == -1
        for k in sorted(set(labels.tolist()) - {-1}):
            ax.scatter(xy[labels == k, 0], xy[labels == k, 1], s=22, color=f"C{k % 10}",
                       label=f"cluster {k + 1}")
        if noise.any():
            ax.scatter(xy[noise, 0], xy[noise, 1], s=60, facecolors="none", edgecolors="k",
                       label="DBSCAN noise")
        if flagged.any():
            ax.scatter(xy[flagged, 0], xy[flagged, 1], marker="x", s=70, color="C3",
                       label="waiting for review")
        ax.legend(loc="best", fontsize=8)
        n_clusters = len(set(labels.tolist()) - {-1})
        report.figures.append(Figure("map", "Explored space", (
            f"Results in the first two principal components of their features, coloured by "
            f"DBSCAN cluster (over more components and the surrogate's residual): "
            f"{n_clusters} cluster(s), {int(noise.sum())} noise point(s); "
            f"{int(flagged.sum())} result(s) wait for review."), _png(fig)))

    last = max(e.round for e in evaluations)
    report.picks, report.picks_round = picks(evaluations, last, unit), last
    return report


def baseline_of(store: CampaignStore, name: str) -> list[Evaluation]:
    """The evaluations of the campaign's random baseline (``<name>-random``), if it was run."""
    try:
        return store.evaluations(store.campaign_id(f"{name}-random"))
    except KeyError:
        return []


def stored_report(store: CampaignStore, config: CampaignConfig, campaign_id: int,
                  unit: str = "") -> Report:
    """:func:`campaign_report` of a stored campaign, beside its random baseline if it was run."""
    return campaign_report(config, store.evaluations(campaign_id), baseline_of(store, config.name),
                           unit)


def report_at(url: str, config: CampaignConfig, campaign_id: int, unit: str = "") -> Report:
    """:func:`stored_report` of the store at ``url``, in a child process that draws a running
    campaign's figures (:func:`~matforge.engine.loop.isolate.run_isolated`) away from the
    campaign's own process. It lowers its process's CPU priority first (niceness +10), so
    that the campaign's next proposal, which runs meanwhile, comes first."""
    os.nice(10)
    store = CampaignStore(runtime_url(url), create=False)
    try:
        return stored_report(store, config, campaign_id, unit)
    finally:
        store.close()


def round_lines(config: CampaignConfig, result, unit: str = "",
                report: Report | None = None) -> list[str]:
    """What a round (:class:`~matforge.engine.store.records.RoundResult`) did, in the
    science, as log lines: picks and results, the pool, flags, the best, the model."""
    r = result.round
    best = "none yet" if result.best is None else f"{significant(result.best)} {unit}".strip()
    lines = [f"round {r}: {len(result.claimed)} picked, {result.evaluated} evaluated, "
             f"{len(result.flagged)} flagged for review; best {config.objective.property} "
             f"{best}" + (f" ({result.note})" if result.note else "")]
    if result.generated or result.refused:
        lines.append(
            f"round {r} pool of {result.n_pool}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(result.generated.items()))
            + "; refused: "
            + (", ".join(f"{k} {v}" for k, v in sorted(result.refused.items())) or "none"))
    for row in report.picks if report is not None else ():
        if row["evaluation"] in result.claimed:
            value = next(v for k, v in row.items() if k.startswith("result"))
            lines.append(f"round {r} picked #{row['evaluation']} {row['formula']} "
                         f"({row['generator']}): predicted {row['predicted'] or 'without a model'}"
                         f", {row['status']} {value} {unit}".rstrip())
    metrics = result.surrogate_metrics
    if metrics:
        lines.append(f"round {r} model {result.surrogate or ''} (held out): RMSE "
                     f"{significant(metrics.get('rmse'), 2)} {unit}, its 90 % intervals hold "
                     f"{100 * metrics.get('coverage90', 0.0):.0f} % of results".replace("  ", " "))
    return lines
