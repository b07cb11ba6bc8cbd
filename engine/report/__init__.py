"""The A/B report: funnel, statistics and health checks of one experiment, from storage.

report = build_report("sqlite:///salesbot.db", experiment="hybrid_vs_pure_llm")
paths = write_report(report, "out/")          # report.html, report.md, report.json
payload = report.to_dict()                     # what report.json holds
"""

from engine.report.build import ReportError, build_report
from engine.report.model import Report
from engine.report.render import render_html, render_markdown, write_report

__all__ = [
    "Report",
    "ReportError",
    "build_report",
    "render_html",
    "render_markdown",
    "write_report",
]
