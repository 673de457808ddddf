"""Pictures drawn on the server as SVG (no JavaScript): a study's chain of blocks, with the break
drawn where a stored file no longer matches its block, and a score over time. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from dicom_chain.qr.browse import ChainLink
from dicom_chain.sharing.scores import Step

BOX_W, BOX_H, GAP, PER_ROW = 92, 44, 22, 8  # a row of eight blocks fits a 1,000-pixel page
COLOURS = {"verified": "#1b5e20", "altered": "#a00000", "missing": "#a00000", "": "#4a4a4a"}


def chain_svg(links: Sequence[ChainLink], released_to: Sequence[tuple[str, str]] = ()) -> str:
    """The blocks left to right, a row of eight at a time, each joined to the one before; a link
    into a block whose file fails is red and dashed, and says so in its title and text. Hops:
    a block received from another institution is labelled "from" it; the study's releases are
    arrows out to each institution, after the blocks."""
    if not links:
        return '<p class="muted">No block in this study yet.</p>'
    rows = (len(links) + PER_ROW - 1) // PER_ROW
    width = PER_ROW * (BOX_W + GAP)
    height = rows * (BOX_H + 34) + 8 + (26 * len(released_to))
    out = [
        f'<svg role="img" aria-labelledby="chain-title" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chain-title">Chain of {len(links)} blocks; '
        f"{sum(1 for link in links if link.state in ('altered', 'missing'))} broken</title>",
    ]
    for n, link in enumerate(links):
        x, y = (n % PER_ROW) * (BOX_W + GAP) + 4, (n // PER_ROW) * (BOX_H + 34) + 4
        broken = link.state in ("altered", "missing")
        colour = COLOURS.get(str(link.state), COLOURS[""])
        label = f"block {link.study_index}: {link.state or 'not verified'}"
        if n % PER_ROW:  # the link from the block before, on the same row
            style = ' stroke-dasharray="4 3"' if broken else ""
            stroke = COLOURS["altered"] if broken else "#4a4a4a"
            out.append(
                f'<line x1="{x - GAP}" y1="{y + BOX_H / 2}" x2="{x}" y2="{y + BOX_H / 2}" '
                f'stroke="{stroke}" stroke-width="2"{style}><title>{escape(label)}</title></line>'
            )
        name = f"#{link.study_index} {escape(link.block_hash[:8])}"
        said = "BREAK" if broken else escape(str(link.state) or "?")
        out.append(
            f"<g><title>{escape(label)} — {escape(link.sop_instance_uid)}</title>"
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" fill="#fff" stroke="{colour}" '
            f'stroke-width="{3 if broken else 1.5}"/>'
            f'<text x="{x + 5}" y="{y + 16}" fill="#1a1a1a">{name}</text>'
            f'<text x="{x + 5}" y="{y + 32}" fill="{colour}">{said}</text></g>'
        )
        if link.received_from:
            out.append(
                f'<text x="{x}" y="{y + BOX_H + 14}" fill="#0b4f9c">from {escape(link.received_from)}</text>'
            )
    top = rows * (BOX_H + 34) + 4
    for n, (institution, when) in enumerate(released_to):
        y = top + 26 * n
        out.append(
            f"<g><title>released to {escape(institution)} at {escape(when[:19])}</title>"
            f'<line x1="4" y1="{y + 9}" x2="40" y2="{y + 9}" stroke="#0b4f9c" stroke-width="2"/>'
            f'<polygon points="40,{y + 4} 48,{y + 9} 40,{y + 14}" fill="#0b4f9c"/>'
            f'<text x="54" y="{y + 13}" fill="#0b4f9c">to {escape(institution)} '
            f"({escape(when[:10])})</text></g>"
        )
    out.append("</svg>")
    return "".join(out)


CHART_W, CHART_H = 240, 60


def score_chart(steps: Sequence[Step], low: float = 0, high: float = 100) -> str:
    """A score's steps as a small line chart (its ``--explain`` history); empty when only the start."""
    if len(steps) < 2:
        return '<span class="muted">no change yet</span>'
    span = max(high - low, 1)
    xs = [round(i * (CHART_W - 8) / (len(steps) - 1) + 4, 1) for i in range(len(steps))]
    ys = [round(CHART_H - 4 - (s.score - low) * (CHART_H - 8) / span, 1) for s in steps]
    points = " ".join(f"{x},{y}" for x, y in zip(xs, ys, strict=True))
    first, last = steps[0].score, steps[-1].score
    title = f"Score from {first:g} to {last:g} over {len(steps) - 1} step(s)"
    return (
        f'<svg role="img" aria-label="{escape(title)}" width="{CHART_W}" height="{CHART_H}" '
        f'viewBox="0 0 {CHART_W} {CHART_H}" xmlns="http://www.w3.org/2000/svg">'
        f'<rect width="{CHART_W}" height="{CHART_H}" fill="#f3f5f8"/>'
        f'<polyline points="{points}" fill="none" stroke="#17324d" stroke-width="2"/></svg>'
    )
