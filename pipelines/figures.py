"""Paper figures: one function each, one style, a colour-blind-safe palette (Okabe-Ito), PDF + PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

# Figures are built without pyplot: no global state, no window, and a notebook shows a returned
# figure exactly once (its inline backend renders Figure objects).

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
STYLE = {"figure.dpi": 150, "savefig.bbox": "tight", "font.size": 9, "axes.spines.top": False,
         "axes.spines.right": False, "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO)}


def save(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Write `name`.pdf (vector) and `name`.png; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.pdf", out / f"{name}.png"]
    for p in paths:
        fig.savefig(p)
    return paths


def mix_composition(table, title: str = "Mix composition"):
    """Stacked bars of training tokens per source, one bar per mix (table: mix.composition_table)."""
    with matplotlib.rc_context(STYLE):
        pivot = table.pivot_table(index="mix", columns="source", values="tokens", aggfunc="sum", fill_value=0)
        pivot = pivot.loc[list(dict.fromkeys(table["mix"]))]  # config order
        fig = Figure(figsize=(1.2 + 0.9 * len(pivot), 3.0))
        ax = fig.subplots()
        bottom = None
        for i, source in enumerate(pivot.columns):
            vals = pivot[source] / 1e6
            ax.bar(pivot.index, vals, bottom=bottom, label=source, color=OKABE_ITO[i % len(OKABE_ITO)])
            bottom = vals if bottom is None else bottom + vals
        ax.set_ylabel("training tokens (millions, GPT-2)")
        ax.set_xlabel("mix")
        ax.set_title(title)
        ax.legend(title="source", frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.tick_params(axis="x", labelrotation=20)
    return fig
