"""Reports of a run: one self-contained HTML file (``report.html``) and a plain-text summary."""

from honed.report.html import build_html
from honed.report.text import summary_text

__all__ = ["build_html", "summary_text"]
