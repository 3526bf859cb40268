"""Hand-written SVG charts for the chaos report: stacked bars, lines on a log scale, a fault timeline.

Pure: numbers in, SVG text out. No plotting library, so a report is one self-contained HTML file
that opens offline and diffs as text. Every chart over time shares the same x axis (seconds from
the start of the run) and shades each fault window with exactly one `rect class="fault-window"`,
so a reader (and a test) can line faults up against their effect.
"""

import math
from collections.abc import Callable, Sequence
from html import escape

from cluster.frozen import frozen

FAULT_FILL = "#d32f2f"
TIMELINE_ROWS_MAX = 40  # windows past this share one last row, so the chart stays one screen tall
LABEL_CHARS_MAX = 34  # longer fault labels are cut in the chart; the full text is in the tooltip

# (start_s, stop_s or None while unhealed)
Span = tuple[float, float | None]


@frozen
class Frame:
    """Pixel geometry of one chart: the plot area is the box inside the margins."""

    width: int = 960
    height: int = 260
    left: int = 72
    right: int = 20
    top: int = 30  # room for the legend
    bottom: int = 42  # room for the time axis labels

    @property
    def plot_width(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_bottom(self) -> int:
        return self.height - self.bottom

    @property
    def plot_height(self) -> int:
        return self.plot_bottom - self.top

    def x(self, t_s: float, end_s: float) -> float:
        return self.left + self.plot_width * min(max(t_s, 0.0), end_s) / end_s


@frozen
class LineSeries:
    name: str
    color: str
    points: Sequence[tuple[float, float | None]]  # (t_s, value); None is a gap in the line


def num(value: float) -> str:
    """Coordinates with one decimal: enough for a screen, and the same text on every run."""
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def tick_label(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:g}"


def nice_step(span: float, target_ticks: int) -> float:
    """A step of 1, 2 or 5 times a power of ten that cuts `span` into about `target_ticks` parts."""
    raw = span / max(target_ticks, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 5, 10):
        if multiple * magnitude >= raw:
            return multiple * magnitude
    raise AssertionError("unreachable: 10 x magnitude >= raw")


def linear_ticks(top: float, target_ticks: int) -> list[float]:
    step = nice_step(top, target_ticks)
    return [i * step for i in range(int(top / step + 1e-9) + 1)]


def _open(chart_id: str, title: str, frame: Frame) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{escape(chart_id)}" class="chart" '
        f'viewBox="0 0 {frame.width} {frame.height}" width="{frame.width}" height="{frame.height}" '
        f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{frame.width}" height="{frame.height}" fill="#ffffff"/>',
    ]


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{num(x)}" y="{num(y)}" text-anchor="{anchor}"{extra}>{escape(text)}</text>'


def time_axis(frame: Frame, end_s: float) -> list[str]:
    """Vertical grid lines with second marks along the bottom, and the axis title."""
    parts = []
    for tick in linear_ticks(end_s, 10):
        x = frame.x(tick, end_s)
        parts.append(f'<line x1="{num(x)}" y1="{frame.top}" x2="{num(x)}" y2="{frame.plot_bottom}" stroke="#e0e0e0"/>')
        parts.append(_text(x, frame.plot_bottom + 16, tick_label(tick), "middle"))
    parts.append(_text(frame.left + frame.plot_width / 2, frame.height - 6, "time since start (s)", "middle"))
    parts.append(
        f'<line x1="{frame.left}" y1="{frame.plot_bottom}" x2="{frame.left + frame.plot_width}" '
        f'y2="{frame.plot_bottom}" stroke="#555"/>'
    )
    return parts


def fault_shading(frame: Frame, spans: Sequence[Span], end_s: float, labels: Sequence[str]) -> list[str]:
    """One translucent rect per fault window across the plot area, plus a solid strip on top that
    stays visible where bars cover the shading."""
    parts = []
    for (start_s, stop_s), label in zip(spans, labels, strict=True):
        x1 = frame.x(start_s, end_s)
        x2 = frame.x(end_s if stop_s is None else stop_s, end_s)
        width = num(max(x2 - x1, 1.0))  # a window shorter than a pixel still shows
        tooltip = f"<title>{escape(label)}</title>"
        parts.append(
            f'<rect class="fault-window" x="{num(x1)}" y="{frame.top}" width="{width}" '
            f'height="{frame.plot_height}" fill="{FAULT_FILL}" fill-opacity="0.12">{tooltip}</rect>'
        )
        parts.append(
            f'<rect class="fault-strip" x="{num(x1)}" y="{frame.top - 4}" width="{width}" height="4" '
            f'fill="{FAULT_FILL}"/>'
        )
    return parts


def legend(frame: Frame, items: Sequence[tuple[str, str]]) -> list[str]:
    """Colour swatches with names, right-aligned in the top margin."""
    parts = []
    x = frame.width - frame.right
    for name, color in reversed(items):
        x -= 16 + 7 * len(name)  # swatch, gap, then about 7 px per character at 12 px
        parts.append(f'<rect x="{num(x)}" y="7" width="12" height="12" fill="{color}"/>')
        parts.append(_text(x + 16, 17, name))
        x -= 14  # space between items
    return parts


def _y_axis(frame: Frame, ticks: Sequence[tuple[float, str]], title: str) -> list[str]:
    """Horizontal grid lines at pixel heights `ticks` (y, label) and a rotated axis title."""
    parts = []
    for y, label in ticks:
        parts.append(
            f'<line x1="{frame.left}" y1="{num(y)}" x2="{frame.left + frame.plot_width}" y2="{num(y)}" '
            f'stroke="#e0e0e0"/>'
        )
        parts.append(_text(frame.left - 6, y + 4, label, "end"))
    mid = frame.top + frame.plot_height / 2
    parts.append(_text(16, mid, title, "middle", f' transform="rotate(-90 16 {num(mid)})"'))
    return parts


def stacked_bars(
    chart_id: str,
    title: str,
    end_s: float,
    bucket_s: float,
    stacks: Sequence[tuple[float, Sequence[float]]],
    series: Sequence[tuple[str, str]],
    faults: Sequence[Span],
    fault_labels: Sequence[str],
    y_title: str,
    frame: Frame = Frame(),
) -> str:
    """Bars per bucket (start_s, values per series, stacked bottom-up in `series` order)."""
    top = max((sum(values) for _, values in stacks), default=0.0)
    ticks = linear_ticks(top if top > 0 else 1.0, 5)
    y_max = ticks[-1] if ticks[-1] >= top else ticks[-1] + (ticks[1] - ticks[0])

    def y(value: float) -> float:
        return frame.plot_bottom - frame.plot_height * value / y_max

    parts = _open(chart_id, title, frame)
    parts += _y_axis(frame, [(y(t), tick_label(t)) for t in ticks if t <= y_max], y_title)
    parts += time_axis(frame, end_s)
    parts += fault_shading(frame, faults, end_s, fault_labels)
    bar_px = frame.plot_width * bucket_s / end_s
    gap = 1.0 if bar_px >= 4 else 0.0
    for start_s, values in stacks:
        x1 = frame.x(start_s, end_s)
        width = max(frame.x(start_s + bucket_s, end_s) - x1 - gap, 0.5)
        base = 0.0
        names = ", ".join(f"{name} {tick_label(round(v, 1))}" for (name, _), v in zip(series, values, strict=True))
        parts.append(f"<g><title>{escape(f'{tick_label(start_s)} s: {names}')}</title>")
        for (_, color), value in zip(series, values, strict=True):
            if value > 0:
                parts.append(
                    f'<rect x="{num(x1)}" y="{num(y(base + value))}" width="{num(width)}" '
                    f'height="{num(y(base) - y(base + value))}" fill="{color}"/>'
                )
            base += value
        parts.append("</g>")
    parts += legend(frame, series)
    parts.append("</svg>")
    return "\n".join(parts)


def log_range(values: Sequence[float]) -> tuple[int, int]:
    """Decades (powers of ten) that bracket every positive value; at least one decade wide."""
    positive = [v for v in values if v > 0]
    if not positive:
        return (0, 1)
    low = math.floor(math.log10(min(positive)))
    high = math.ceil(math.log10(max(positive)))
    return (low, max(high, low + 1))


def ms_label(ms: float) -> str:
    return f"{tick_label(ms / 1000)} s" if ms >= 1000 else f"{tick_label(ms)} ms"


def log_lines(
    chart_id: str,
    title: str,
    end_s: float,
    series: Sequence[LineSeries],
    faults: Sequence[Span],
    fault_labels: Sequence[str],
    y_title: str,
    frame: Frame = Frame(),
) -> str:
    """Lines on a log scale: latencies span decades (1 ms healthy, a timeout under faults), and a
    linear axis would flatten the healthy part to zero."""
    values = [v for s in series for _, v in s.points if v is not None]
    low, high = log_range(values)

    def y(value: float) -> float:
        clamped = max(value, 10.0**low)
        return frame.plot_bottom - frame.plot_height * (math.log10(clamped) - low) / (high - low)

    decades = [10.0**d for d in range(low, high + 1)]
    parts = _open(chart_id, title, frame)
    parts += _y_axis(frame, [(y(d), ms_label(d)) for d in decades], y_title)
    parts += time_axis(frame, end_s)
    parts += fault_shading(frame, faults, end_s, fault_labels)
    for line in series:
        parts += _polyline_runs(frame, end_s, line, y)
    if not values:
        parts.append(_text(frame.left + frame.plot_width / 2, frame.top + 40, "no completed operations", "middle"))
    parts += legend(frame, [(s.name, s.color) for s in series])
    parts.append("</svg>")
    return "\n".join(parts)


def _polyline_runs(frame: Frame, end_s: float, line: LineSeries, y: Callable[[float], float]) -> list[str]:
    """One polyline per run of consecutive points; a lone point between gaps becomes a dot."""
    runs: list[list[tuple[float, float]]] = [[]]
    for t_s, value in line.points:
        if value is None:
            runs.append([])
        else:
            runs[-1].append((frame.x(t_s, end_s), y(value)))
    parts = []
    for run in runs:
        if len(run) == 1:
            parts.append(f'<circle cx="{num(run[0][0])}" cy="{num(run[0][1])}" r="2.5" fill="{line.color}"/>')
        elif run:
            points = " ".join(f"{num(x)},{num(py)}" for x, py in run)
            parts.append(f'<polyline points="{points}" fill="none" stroke="{line.color}" stroke-width="1.8"/>')
    return parts


def timeline(chart_id: str, title: str, end_s: float, faults: Sequence[Span], labels: Sequence[str]) -> str:
    """A Gantt chart: one row per fault window, labelled beside its bar. Its margins are the other
    charts' so that, stacked in the page, a fault sits right above its effect."""
    row_px, char_px = 22, 6.5
    shown = min(len(faults), TIMELINE_ROWS_MAX)
    rows = shown + (1 if len(faults) > shown else 0)
    frame = Frame(height=14 + max(rows, 1) * row_px + 42, top=14)
    parts = _open(chart_id, title, frame)
    parts += time_axis(frame, end_s)
    mid = frame.top + frame.plot_height / 2
    parts.append(_text(16, mid, "faults", "middle", f' transform="rotate(-90 16 {num(mid)})"'))
    if not faults:
        parts.append(_text(frame.left + frame.plot_width / 2, frame.top + 15, "no faults injected", "middle"))
    for index, ((start_s, stop_s), label) in enumerate(zip(faults, labels, strict=True)):
        y = frame.top + min(index, shown) * row_px  # windows past the cap all go on the last row
        x1 = frame.x(start_s, end_s)
        x2 = frame.x(end_s if stop_s is None else stop_s, end_s)
        until = "never healed" if stop_s is None else f"{stop_s:.1f} s"
        tooltip = escape(f"{label}: {start_s:.1f} s to {until}")
        dash = ' stroke="#000" stroke-dasharray="3 2"' if stop_s is None else ""
        parts.append(
            f'<rect class="fault-bar" x="{num(x1)}" y="{y + 4}" width="{num(max(x2 - x1, 1.0))}" '
            f'height="{row_px - 8}" fill="{FAULT_FILL}"{dash}><title>{tooltip}</title></rect>'
        )
        if index <= shown:
            text = label if index < shown else f"… and {len(faults) - shown} more"
            cut = text if len(text) <= LABEL_CHARS_MAX else text[: LABEL_CHARS_MAX - 1] + "…"
            # After the bar when the label fits before the right edge, else before the bar.
            if x2 + 6 + char_px * len(cut) <= frame.width - frame.right:
                parts.append(_text(x2 + 6, y + 15, cut))
            else:
                parts.append(_text(x1 - 6, y + 15, cut, "end"))
    parts.append("</svg>")
    return "\n".join(parts)
