"""HTML reports of an experiment: an index page and one self-contained page per patient, and
``all_pages.html``, every page in one file linked by anchors (what Snakemake's report embeds).

The code lives in private modules; this namespace only re-exports. ``page_names`` is public so
that workflow rules can name the patient pages they expect.
"""

from biocls.report._render import page_names, render_reports

__all__ = ["page_names", "render_reports"]
