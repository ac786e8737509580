"""`tokenmeter report`: a tenant's spend summary for the terminal or an HTML file."""

from __future__ import annotations

import html
from typing import Any


def print_report(data: dict[str, Any]) -> None:
    """Render the report in the terminal."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # every value below came from events or budgets (a feature may be named "[/]"): each is
    # printed as Text, never parsed as rich markup
    c = Console()
    t = data["total"]
    head = Text(str(data["tenant_id"]), style="bold")
    head.append(f"  {data['period']} to date ({data['from'][:10]} .. {data['to'][:16]})")
    c.print(head)
    c.print(Text(f"spend {t['cost'] or 0}  saved by cache hits {t['saved_cost'] or 0}  "
                 f"tokens {t['tokens'] or 0}  value units {t['value_units'] or 0}  "
                 f"events {t['events']}"))
    for title, key, cols in (("Top models", "models", ["model", "cost", "events"]),
                             ("Top features", "features", ["feature", "cost", "events"]),
                             ("Budgets", "budgets", ["budget", "metric", "spent", "limit", "%",
                                                     "forecast model", "forecast end",
                                                     "P(over)"])):
        table = Table(*cols, title=title)
        for r in data[key]:
            table.add_row(*(Text("" if v is None else str(v)) for v in r))
        c.print(table)


def _bars(points: list[tuple[str, float]], width: int = 640, height: int = 160) -> str:
    if not points:
        return "<p>no data</p>"
    top = max(v for _, v in points) or 1.0
    bw = width / len(points)
    bars = "".join(
        f'<rect x="{i * bw + 2:.1f}" y="{height - 20 - (v / top) * (height - 30):.1f}" '
        f'width="{bw - 4:.1f}" height="{(v / top) * (height - 30):.1f}" fill="#0072B2">'
        f"<title>{html.escape(label)}: {v:.4f}</title></rect>"
        for i, (label, v) in enumerate(points))
    return (f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'role="img" aria-label="bar chart">{bars}</svg>')


def html_report(data: dict[str, Any]) -> str:
    """A self-contained HTML page with the report and simple SVG bar charts."""
    def table(cols: list[str], rows: list[list[Any]]) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                       for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    t = data["total"]
    daily = [(str(d), float(c)) for d, c in data["daily"]]
    models = [(str(m), float(c)) for m, c, _ in data["models"]]
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>tokenmeter report: {html.escape(data['tenant_id'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}}
table{{border-collapse:collapse;margin:1rem 0}}
td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body><h1>{html.escape(data['tenant_id'])}: {html.escape(data['period'])} to date</h1>
<p>Spend <b>{t['cost'] or 0}</b>, saved by cache hits {t['saved_cost'] or 0},
{t['tokens'] or 0} tokens, {t['value_units'] or 0} value units, {t['events']} events.</p>
<h2>Daily spend</h2>{_bars(daily)}
<h2>Top models</h2>{_bars(models)}{table(['model', 'cost', 'events'], data['models'])}
<h2>Top features</h2>{table(['feature', 'cost', 'events'], data['features'])}
<h2>Budgets</h2>{table(['budget', 'metric', 'spent', 'limit', '%', 'forecast model',
                        'forecast end', 'P(over)'], data['budgets'])}
</body></html>"""
