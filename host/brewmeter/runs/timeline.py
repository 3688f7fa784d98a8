"""`brewmeter simulate --timeline out.csv --plot out.png`: the year a row a day, and as a
picture (matplotlib, the `plot` extra: pip install 'brewmeter[plot]')."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

WIDTH_PX = 720  # the picture is 720 x 320 pixels


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Each consumable's level (% left) over the days, with its orders (^), deliveries (o)
    and stock-outs (x) marked on its line."""
    import matplotlib
    from app.supplies import ITEMS

    matplotlib.use("Agg")  # a file, no display
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4), dpi=WIDTH_PX // 9)
    days = [r["day"] for r in rows]
    marks = (("orders_requested", "^", "ordered"), ("orders_delivered", "o", "delivered"),
             ("stockouts", "x", "stock-out"))
    labelled: set[str] = set()
    styles = ("-", "--", ":", "-.")  # the filter and the descaler often share a line
    for i, name in enumerate(ITEMS):
        level = [r[f"{name}_pct"] for r in rows]
        (line,) = ax.plot(days, level, styles[i % len(styles)], label=name, linewidth=1.3)
        for key, marker, what in marks:
            hit = [(r["day"], r[f"{name}_pct"]) for r in rows if name in r[key].split()]
            if hit:
                ax.scatter(*zip(*hit, strict=True), marker=marker, s=40,
                           color="red" if marker == "x" else line.get_color(), zorder=3,
                           label=None if what in labelled else what,
                           edgecolors="black" if marker != "x" else None, linewidths=0.5)
                labelled.add(what)
    ax.set_xlabel("day")
    ax.set_ylabel("% left")
    ax.set_ylim(-5, 105)
    ax.set_xlim(0, max(days) + 1)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
