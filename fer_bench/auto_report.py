"""How auto fared against the fixed strategies beside it: at each point of a sweep, and along a trace.

:func:`auto_against_best` and :func:`auto_summary` compare auto's p50 and mean with the best
fixed strategy's at each point of ``fer-bench network``; :func:`auto_cost` splits auto's time on
a trace (``fer-bench trace``) by what it chose and why, against the best fixed strategy's mean.
"""

from __future__ import annotations

import statistics

from .network import PROFILES, STRATEGIES, PointRecord, text_table

__all__ = ["fixed_strategy_of", "auto_cost", "format_auto_cost", "auto_against_best", "auto_summary", "format_auto_summary", "format_auto_table"]


def fixed_strategy_of(auto_name: str, choice: str) -> str | None:
    """The fixed strategy of :data:`STRATEGIES` that sends what ``auto_name`` (``auto``) sends when it chooses
    ``choice`` (same strategy and wire options: auto's ``cloud`` is ``cloud-jpeg`` at its image size), or ``None``."""
    auto = STRATEGIES[auto_name]
    wire = (auto.encoding, auto.image_format, auto.image_size, auto.split_returns)
    for spec in STRATEGIES.values():
        if spec.strategy == choice and (spec.encoding, spec.image_format, spec.image_size, spec.split_returns) == wire:
            return spec.name
    return None


def auto_cost(records: list[dict]) -> list[dict]:
    """Where auto's time went against the best fixed strategy of the same trace (the lowest mean).

    Per shaper, auto's faces are grouped by what it chose and why (``fastest``,
    ``exploring``, ``calibrating``); each group's ``excess_ms`` is the sum over its faces of their latency
    less the best fixed strategy's mean, so the groups add up to auto's whole excess (``all``), and
    ``share_pct`` is that excess against the best fixed strategy's time for as many faces. A trace where
    one strategy wins every step shows here what choosing cost: the faces spent re-measuring the others,
    and how much slower auto's own faces on the winner were than the winner's (auto's own work, the
    bucket or CPU budget a re-measurement used up). Records of strategies :data:`STRATEGIES` does not
    name (a run of an older version) are left out."""
    records = [r for r in records if r["name"] in STRATEGIES]
    rows = []
    for shaper in sorted({r["shaper"] for r in records}):
        here = [r for r in records if r["shaper"] == shaper]
        means = {name: statistics.fmean(r["total"] for r in here if r["name"] == name) for name in {r["name"] for r in here}}
        fixed = {name: mean for name, mean in means.items() if STRATEGIES[name].strategy != "auto"}
        if not fixed:
            continue
        best = min(fixed, key=fixed.__getitem__)
        for name in sorted(set(means) - set(fixed)):
            mine = [r for r in here if r["name"] == name]
            groups: dict[tuple[str, str], list[float]] = {}
            for r in mine:
                groups.setdefault((r.get("auto_choice") or "", r.get("auto_reason") or ""), []).append(r["total"])
            base = {"shaper": shaper, "auto": name, "best": best, "best_mean_ms": round(fixed[best], 3)}
            for (choice, reason), totals in [*sorted(groups.items()), (("all", ""), [r["total"] for r in mine])]:
                excess = sum(totals) - len(totals) * fixed[best]
                rows.append({
                    **base, "choice": choice, "as": fixed_strategy_of(name, choice) if choice != "all" else name, "reason": reason,
                    "faces": len(totals), "mean_ms": round(statistics.fmean(totals), 3), "excess_ms": round(excess, 1),
                    "share_pct": round(100 * excess / (len(mine) * fixed[best]), 2),
                })
    return rows


def format_auto_cost(rows: list[dict]) -> str:
    """:func:`auto_cost`'s rows as a table."""
    return text_table(
        f"{'shaper':<8}{'auto':<15}{'best fixed':<12}{'its mean':>9}  {'chose':<11}{'why':<12}{'faces':>6}{'mean ms':>9}{'excess ms':>11}{'share':>8}",
        "{shaper:<8}{auto:<15}{best:<12}{best_mean_ms:>9.2f}  {choice:<11}{reason:<12}{faces:>6}{mean_ms:>9.2f}{excess_ms:>11.1f}{share_pct:>7.2f}%",
        rows,
    )


def auto_against_best(records: list[PointRecord]) -> list[dict]:
    """At each point: the best fixed strategy by p50, and auto's p50 and mean against it."""
    rows = []
    points = sorted({(r.profile, r.shaper, r.bandwidth_kbps) for r in records}, key=lambda k: (list(PROFILES).index(k[0]), k[1], k[2]))
    for key in points:
        here = [r for r in records if (r.profile, r.shaper, r.bandwidth_kbps) == key]
        auto = next((r for r in here if r.strategy == "auto"), None)
        fixed = [r for r in here if STRATEGIES[r.strategy].strategy != "auto"]
        if auto is None or not fixed:
            continue
        best = min(fixed, key=lambda r: r.p50_ms)
        row = {
            "profile": key[0], "shaper": key[1], "bandwidth_kbps": key[2], "best": best.strategy, "best_p50_ms": best.p50_ms,
            "auto_p50_ms": auto.p50_ms, "p50_ratio": auto.p50_ms / best.p50_ms, "best_mean_ms": best.mean_ms, "auto_mean_ms": auto.mean_ms,
            "auto_choices": auto.auto_choices, "explorations": auto.explorations,
        }
        rows.append(row)
    return rows


def auto_summary(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Over the points of :func:`auto_against_best`: how often auto's p50 was within 1.10x of the best
    fixed strategy's, the median and worst ratio, and its mean latency averaged over the points."""
    if not rows:
        return {}
    ratios = [r["p50_ratio"] for r in rows]
    return {
        "auto": {
            "points": len(ratios), "within_1.10x": sum(v <= 1.10 for v in ratios), "median_ratio": round(statistics.median(ratios), 3),
            "worst_ratio": round(max(ratios), 3), "mean_ms_averaged": round(statistics.mean(r["auto_mean_ms"] for r in rows), 2),
        },
    }


def format_auto_summary(summary: dict[str, dict[str, float]]) -> str:
    """:func:`auto_summary` in words."""
    return "\n".join(
        f"{name}: p50 within 1.10x of the best fixed at {part['within_1.10x']} of {part['points']} points, median {part['median_ratio']:.3f}x, "
        f"worst {part['worst_ratio']:.2f}x; mean latency averaged over the points {part['mean_ms_averaged']:.2f} ms"
        for name, part in summary.items()
    )


def format_auto_table(rows: list[dict]) -> str:
    """:func:`auto_against_best`'s rows as a table."""
    return text_table(
        f"{'profile':<8}{'shaper':<7}{'KB/s':>6}  {'best fixed':<15}{'p50':>7}{'auto p50':>9}{'ratio':>7}{'best mean':>10}{'auto mean':>10}  auto's choices (explorations)",
        "{profile:<8}{shaper:<7}{bandwidth_kbps:>6.0f}  {best:<15}{best_p50_ms:>7.1f}{auto_p50_ms:>9.1f}{p50_ratio:>7.2f}"
        "{best_mean_ms:>10.1f}{auto_mean_ms:>10.1f}  {auto_choices} ({explorations})",
        rows,
    )
