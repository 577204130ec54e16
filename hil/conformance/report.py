"""The single-file HTML report of a conformance run: stamp, verdict, results per requirement,
the traceability matrix, failures, skips, and the delivery plots the tests recorded.

Everything is inline (CSS and SVG plots), so the file can be archived, mailed or attached to a
test record as it is.
"""

from __future__ import annotations

import html
import io
from collections import Counter
from pathlib import Path

from .plugin import Figure
from .runner import RunResult, TestResult

__all__ = ["REPORT_NAME", "group_summary", "render_html", "write_report"]

REPORT_NAME = "report.html"

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em} td,th{border:1px solid #ccc;padding:.25em .5em;
vertical-align:top;text-align:left} th{background:#f3f3f3}
.passed{color:#176b2c;font-weight:600}.failed,.error,.xpassed{color:#b00020;font-weight:600}
.skipped,.notrun{color:#777}.xfailed{color:#a15c00;font-weight:600}
.verdict{display:inline-block;padding:.3em .8em;border-radius:.3em;color:#fff;font-weight:700}
.ok{background:#176b2c}.bad{background:#b00020} pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
code{font-size:.92em}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _outcome(outcome: str) -> str:
    return f'<span class="{outcome.replace(" ", "")}">{_e(outcome)}</span>'


def group_summary(result: RunResult) -> list[tuple[str, str, Counter[str]]]:
    """(group, area, requirement statuses counted) for every group in the profile, in order."""
    status = result.requirement_status()
    groups: dict[str, tuple[str, Counter[str]]] = {}
    for req in result.in_scope():
        counts = groups.setdefault(req.group, (req.area, Counter()))[1]
        counts[status[req.id]] += 1
    return [(g, a, c) for g, (a, c) in groups.items()]


def _figure_svg(fig: Figure) -> str:
    import matplotlib  # noqa: PLC0415 - only a report with plots pays for matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, ax = plt.subplots(figsize=(8, 3.6))
    try:
        for name, points in sorted(fig.series.items(), key=lambda kv: not kv[0].startswith("bound")):
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            if name.startswith("bound"):  # a limit: dashed, under the curves it bounds
                ax.plot(xs, ys, linestyle="--", linewidth=2.5, color="0.6", label=name, zorder=1)
            elif fig.style == "line":
                ax.plot(xs, ys, marker="o", markersize=4, label=name, zorder=2)
            else:
                ax.step(xs, ys, where="post", label=name, zorder=2)
        if fig.x_log:
            ax.set_xscale("log")
        ax.set_title(fig.title)
        ax.set_xlabel(fig.x_label)
        ax.set_ylabel(fig.y_label)
        ax.grid(visible=True, alpha=0.3)
        ax.legend()
        buf = io.StringIO()
        figure.savefig(buf, format="svg", bbox_inches="tight")
    finally:
        plt.close(figure)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def render_html(result: RunResult) -> str:
    c = result.counts
    verdict = (
        '<span class="verdict ok">PASS</span>: every required test passed'
        if result.ok
        else '<span class="verdict bad">FAIL</span>: see the failures below'
    )
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>pumprig conformance: {_e(', '.join(t.name for t in result.targets) or 'no target')}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>pumprig conformance report</h1>",
        f"<p>{verdict}. {c['passed']} passed, {c['failed'] + c['error']} failed, {c['xpassed']} passed unexpectedly, "
        f"{c['xfailed']} expected failures, {c['skipped']} skipped.</p>",
        "<table>",
        f"<tr><th>pumprig version</th><td>{_e(result.version)}</td></tr>",
        f"<tr><th>profile</th><td>{_e(result.profile)}</td></tr>",
        f"<tr><th>hypothesis seed</th><td><code>{result.seed}</code> (repeat with <code>--seed {result.seed}</code>)"
        "</td></tr>",
        f"<tr><th>started</th><td>{_e(result.started_at)}</td></tr>",
        f"<tr><th>duration</th><td>{result.duration_s:.1f} s</td></tr>",
        f"<tr><th>command</th><td><code>{_e(result.command)}</code></td></tr>",
        "</table>",
    ]
    if result.collection_errors:
        out.append("<h2>Suite errors</h2>")
        out.extend(f"<pre>{_e(err)}</pre>" for err in result.collection_errors)
    out.append("<h2>Targets</h2>")
    for info in result.targets:
        out.append(f"<h3>{_e(info.name)}</h3><p><code>{_e(info.url)}</code> {_e(info.description)}</p>")
        out.append(f"<p>features used: {_e(', '.join(info.features) or 'none')}</p>")
        out.append("<table><tr><th colspan=2>IDENTIFY reply</th></tr>")
        out.extend(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in info.identify.items())
        out.append("</table>")
    out.append("<h2>Summary per requirement group</h2><table><tr><th>group</th><th>area</th><th>requirements</th>")
    out.append("<th>passed</th><th>failed</th><th>expected failure</th><th>skipped</th><th>not run</th></tr>")
    for group, area, counts in group_summary(result):
        cells = "".join(f"<td>{counts[k]}</td>" for k in ("passed", "failed", "xfailed", "skipped", "not run"))
        out.append(f"<tr><td>{_e(group)}</td><td>{_e(area)}</td><td>{sum(counts.values())}</td>{cells}</tr>")
    out.append("</table>")
    out.append(_matrix(result))
    failing = [t for t in result.results if t.outcome in ("failed", "error", "xpassed")]
    if failing:
        out.append("<h2>Failures</h2>")
        for t in failing:
            out.append(f"<h3>{_outcome(t.outcome)} {_e(t.name)} [{_e(t.target)}]</h3>")
            out.append(f"<p>{_e(', '.join(t.requirements))}</p><pre>{_e(t.details or t.message)}</pre>")
    noted = [t for t in result.results if t.outcome in ("skipped", "xfailed")]
    if noted:
        out.append("<h2>Skipped and expected failures</h2><table><tr><th>test</th><th>target</th><th>outcome</th>")
        out.append("<th>reason</th></tr>")
        out.extend(
            f"<tr><td>{_e(t.name)}</td><td>{_e(t.target)}</td><td>{_outcome(t.outcome)}</td><td>{_e(t.message)}</td></tr>"
            for t in noted
        )
        out.append("</table>")
    figures = [(test, f) for test in result.results for f in test.figures]
    if figures:
        out.append("<h2>Delivery plots</h2>")
        for test, fig in figures:
            out.append(f"<h3>{_e(fig.title)}</h3><p>{_e(test.name)} [{_e(test.target)}]: {_outcome(test.outcome)}</p>")
            out.append(_figure_svg(fig))
    out.append("<h2>Every test</h2><table><tr><th>test</th><th>target</th><th>requirements</th><th>outcome</th>")
    out.append("<th>seconds</th></tr>")
    out.extend(
        f"<tr><td>{_e(t.name)}</td><td>{_e(t.target)}</td><td>{_e(' '.join(t.requirements))}</td>"
        f"<td>{_outcome(t.outcome)}</td><td>{t.duration_s:.3f}</td></tr>"
        for t in result.results
    )
    out.append("</table></body></html>")
    return "\n".join(out)


def _matrix(result: RunResult) -> str:
    status = result.requirement_status()
    rows = [
        "<h2>Traceability matrix</h2><table><tr><th>requirement</th><th>text</th><th>source</th><th>profile</th>",
        "<th>tests</th><th>result</th></tr>",
    ]
    for req in result.in_scope():
        tests = result.tests_of(req.id)
        cell = "<br>".join(_test_cell(t) for t in tests) or "<span class='notrun'>none selected</span>"
        rows.append(
            f"<tr><td id='{_e(req.id)}'><code>{_e(req.id)}</code></td><td>{_e(req.text)}</td><td>{_e(req.source)}</td>"
            f"<td>{_e(req.profile)}</td><td>{cell}</td><td>{_outcome(status[req.id])}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _test_cell(t: TestResult) -> str:
    target = f" [{_e(t.target)}]" if t.target else ""
    return f"{_e(t.name)}{target}: {_outcome(t.outcome)}"


def write_report(result: RunResult, directory: Path) -> Path:
    """Write ``directory/report.html`` (the directory is created); its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REPORT_NAME
    path.write_text(render_html(result), encoding="utf-8")
    return path
