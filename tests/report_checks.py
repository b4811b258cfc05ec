"""Checks of rendered report pages, shared by the renderer's tests and the workflow's."""

from __future__ import annotations

import re
from pathlib import Path

from biocls.report._render import BUNDLE_LIMIT

HREF = re.compile(r'href="([^"]*)"')


def check_links(page: Path) -> list[str]:
    """Every link of a standalone page leads to a file that exists (or an anchor on the page)."""
    text = page.read_text()
    hrefs = HREF.findall(text)
    for href in hrefs:
        if href.startswith("#"):
            assert f'id="{href[1:]}"' in text, (page.name, href)
        else:
            assert (page.parent / href).is_file(), (page.name, href)
    return hrefs


def check_bundle(text: str, n_patients: int) -> None:
    """all_pages.html: one section per page, and every link an anchor of the same file, so that
    it works as a data: URL (Snakemake's report.html) as well as a file."""
    ids = set(re.findall(r'id="([^"]+)"', text))
    sections = re.findall(r'<section class="page" id="([^"]+)">', text)
    assert len(sections) == n_patients + 1 and sections[-1] == "index"  # the index last
    hrefs = HREF.findall(text)
    assert hrefs and all(h.startswith("#") and h[1:] in ids for h in hrefs), \
        [h for h in hrefs if not h.startswith("#") or h[1:] not in ids]
    for section in sections[:-1]:
        assert f'href="#{section}"' in text  # the index (or a neighbour) links every patient
    assert "section.page:target ~ section#index { display: none; }" in text
    assert len(text.encode()) <= BUNDLE_LIMIT
