"""Inline SVG charts for the console: no script, scales to the page's width."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from html import escape

W, H, PAD_L, PAD_B, PAD_T = 720, 180, 34, 22, 10


def bars(series: Sequence[tuple[date, int, bool]]) -> str:
    """Brews per day as bars (estimated days lighter), a y scale and month labels."""
    n = max(1, len(series))
    top = max([b for _, b, _ in series] + [1])
    step = 10 ** max(0, len(str(top)) - 1)
    top = -(-top // step) * step  # rounded up to a round number
    plot_w, plot_h = W - PAD_L - 4, H - PAD_B - PAD_T
    bw = plot_w / n
    out = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" '
           f'aria-label="brews per day, last {n} days" xmlns="http://www.w3.org/2000/svg">']
    for frac in (0, 0.5, 1):
        y = PAD_T + plot_h * (1 - frac)
        out.append(f'<line x1="{PAD_L}" x2="{W - 4}" y1="{y:.1f}" y2="{y:.1f}" '
                   'class="grid"/>')
        out.append(f'<text x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{round(top * frac)}</text>')
    for i, (d, b, est) in enumerate(series):
        x = PAD_L + i * bw
        h = plot_h * b / top
        cls = "bar est" if est else "bar"
        out.append(f'<rect x="{x + 0.5:.1f}" y="{PAD_T + plot_h - h:.1f}" '
                   f'width="{max(bw - 1, 1):.1f}" height="{h:.1f}" class="{cls}">'
                   f'<title>{escape(d.isoformat())}: {b} brews'
                   f'{" (estimated)" if est else ""}</title></rect>')
        if d.day == 1 or i == 0:
            out.append(f'<text x="{x:.1f}" y="{H - 6}">{d.strftime("%d %b")}</text>')
    out.append("</svg>")
    return "".join(out)
