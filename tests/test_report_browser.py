"""The single-file report in a real browser, as Snakemake's report.html shows it: a data: URL
in a frame. Skipped where no Chromium is installed (``apt-get install chromium``)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import _cells_results, _repertoire_results

from biocls.report import render_reports

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium to run")

# Injected into a copy of all_pages.html: click the first patient of the index, then that page's
# last navigation link ("next patient"), then "← all patients"; after each click, report the
# address's anchor and which sections are displayed, to the parent frame.
PROBE = """<script>
function shown() { return Array.from(document.querySelectorAll('section.page'))
  .filter(s => getComputedStyle(s).display !== 'none').map(s => s.id).join(','); }
const steps = ['start:' + shown()];
document.querySelector('#index a[href^="#p-"]').click();
setTimeout(() => { steps.push('patient:' + location.hash + ':' + shown());
  const nav = document.querySelectorAll(location.hash + ' nav a'); nav[nav.length - 1].click();
  setTimeout(() => { steps.push('next:' + location.hash + ':' + shown());
    document.querySelector(location.hash + ' nav a[href="#index"]').click();
    setTimeout(() => { steps.push('back:' + location.hash + ':' + shown());
      parent.postMessage(steps.join(' | '), '*'); }, 200);
  }, 200);
}, 200);
</script></body>"""


def _clicks_in_a_data_frame(bundle: Path, tmp_path: Path) -> list[str]:
    page = bundle.read_text(encoding="utf-8").replace("</body>", PROBE)
    uri = ("data:text/html;charset=utf8;filename=all_pages.html;base64,"
           + base64.b64encode(page.encode()).decode())
    wrapper = tmp_path / "wrapper.html"
    wrapper.write_text(
        '<html><body><pre id="out">no message</pre><script>window.addEventListener("message",'
        ' e => { document.getElementById("out").textContent = e.data; });</script>'
        f'<iframe src="{uri}" width="1200" height="900"></iframe></body></html>')
    proc = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
         wrapper.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="out">([^<]*)</pre>', proc.stdout)
    assert found, proc.stderr[-2000:]
    return found.group(1).split(" | ")


@pytest.mark.parametrize("make", [_cells_results, _repertoire_results])
def test_links_work_in_a_data_url_frame(make, tmp_path: Path) -> None:
    results = make(tmp_path / "data")
    render_reports(results)
    steps = _clicks_in_a_data_frame(results / "reports" / "all_pages.html", tmp_path)
    assert len(steps) == 4, steps
    assert steps[0] == "start:index"
    _, anchor, shown = steps[1].split(":", 2)
    assert anchor.startswith("#p-") and shown == anchor[1:]  # the patient alone
    _, anchor2, shown2 = steps[2].split(":", 2)
    assert anchor2 != anchor and shown2 == anchor2[1:]  # the next patient alone
    assert steps[3] == "back:#index:index"
