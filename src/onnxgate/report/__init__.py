"""Reports: the pipeline's JSON report, its published schema, and the self-contained HTML rendering."""

from .html import render_html

__all__ = ["render_html"]
