"""The decision report in words: the findings of evaluate/decisions.json (the evaluate log's and the
paper's Results paragraph), and the verdict words of a paired difference."""

from __future__ import annotations

import numpy as np

from pipelines.evaluate.metrics import METRICS

BETTER, WORSE, SAME = "better", "worse", "no detectable difference"


def format_value(metric: str, x: float | None, signed: bool = False) -> str:
    """Accuracy-like metrics in percentage points, the others as they are."""
    if x is None or not np.isfinite(x):
        return "n/a"
    if METRICS.get(metric, {}).get("percent"):
        return f"{100 * x:+.1f} pt" if signed else f"{100 * x:.1f}%"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _pair_text(r: dict, p: dict) -> str:
    m = r["metric"]
    return f"{r['label']} {format_value(m, p['diff'], True)} [{format_value(m, p['ci_low'], True)}, " \
           f"{format_value(m, p['ci_high'], True)}]"


def findings(report: dict) -> list[str]:
    """Plain sentences, the evaluate log's and the paper's Results paragraph: per scale (largest first)
    how many comparisons are decided, what separates which mixes and what does not; the metrics with the
    highest signal-to-noise; decision accuracy between scales; the same-mix check."""
    out = []
    level = report["settings"]["level"]
    for scale in reversed(report["scales"]):
        rs = [r for r in report["results"] if r["scale"] == scale]
        if not rs:
            continue
        seeds = report["seeds"].get(scale, {})
        k = sorted({len(v) for v in seeds.values()})
        pairs = [(r, p) for r in rs for p in r["pairs"]]
        detected = [(r, p) for r, p in pairs if p["verdict"] != SAME]
        avg = report["settings"]["average_last"]
        out.append(f"At scale {scale} ({'/'.join(map(str, k))} seed(s) per mix"
                   f"{f', each metric averaged over the last {avg} evaluated checkpoints' if avg > 1 else ''}, "
                   f"{len(rs)} metrics): {len(detected)} of {len(pairs)} mix comparisons show a difference at "
                   f"{level:.0%} confidence (about {(1 - level) * len(pairs):.1f} would by chance alone)."
                   + ("" if all(r["seed_noise"] for r in rs) else
                      " With one seed per mix the intervals cover the items only, not the training seed."))
        by_pair: dict[tuple, list] = {}
        for r, p in pairs:
            by_pair.setdefault((p["a"], p["b"]), []).append((r, p))
        for (a, b), items in by_pair.items():
            sep = [(r, p) for r, p in items if p["verdict"] != SAME]
            if not sep:
                out.append(f"{a} vs {b}: no detectable difference on any of the {len(items)} metrics.")
                continue
            better = [(r, p) for r, p in sep if p["verdict"] == BETTER]
            worse = [(r, p) for r, p in sep if p["verdict"] == WORSE]
            parts = []
            if better:
                parts.append(f"{a} is better on " + "; ".join(_pair_text(r, p) for r, p in better[:4])
                             + (f" and {len(better) - 4} more" if len(better) > 4 else ""))
            if worse:
                parts.append(f"{a} is worse on " + "; ".join(_pair_text(r, p) for r, p in worse[:4])
                             + (f" and {len(worse) - 4} more" if len(worse) > 4 else ""))
            out.append(f"{a} vs {b} (difference {a} - {b}): " + "; ".join(parts)
                       + f"; no detectable difference on the other {len(items) - len(sep)} metrics.")
        ranked = [x for x in report["snr_ranking"].get(scale, []) if x["snr"] is not None]
        if ranked:
            top = ", ".join(f"{x['label']} ({x['snr']:.1f})" for x in ranked[:3])
            low = ", ".join(f"{x['label']} ({x['snr']:.1f})" for x in ranked[-3:])
            deciding = [x for x in ranked if x["decisive"]]
            out.append(f"Highest signal-to-noise at {scale}: {top}; lowest: {low}. "
                       f"{len(deciding)} of {len(ranked)} metrics decide at least one pair at this scale.")
    for small in report["scales"][:-1]:
        acc = [a for a in report["decision_accuracy"] if a["small"] == small and a["value"] is not None]
        if not acc:
            continue
        vals = np.array([a["value"] for a in acc])
        # ranked by the interval's low end: an agreement of 1.00 with CI [0, 1] says nothing
        low_end = [a["ci_low"] if a["ci_low"] is not None and np.isfinite(a["ci_low"]) else -np.inf for a in acc]
        top = [acc[i] for i in sorted(range(len(acc)), key=lambda i: (-low_end[i], -acc[i]["value"]))][:3]
        out.append(f"Decision accuracy of {small} against {acc[0]['large']} ({acc[0]['pairs']} pairs of mixes per "
                   f"metric): median {np.median(vals):.2f} over {len(acc)} metrics, "
                   f"{int((vals == 1).sum())} of them order every pair as {acc[0]['large']} does; surest (highest CI low end): "
                   + ", ".join(f"{a['key']} {a['value']:.2f} [{a['ci_low']:.2f}, {a['ci_high']:.2f}]" for a in top)
                   + ".")
    n = report["null_check"]
    if n["comparisons"]:
        out.append(f"Same mix, different seeds (seed noise estimated from the other mixes): {n['detected']} of "
                   f"{n['comparisons']} comparisons ({n['rate']:.1%}) are called a difference; {1 - level:.0%} is "
                   f"expected when the test is calibrated and the mixes' seed noise is alike (the comparisons share "
                   f"seeds and items, so the count varies more than a binomial one).")
    return out
