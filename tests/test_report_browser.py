"""The report page looked at, not only parsed: headless Chromium (Debian's `chromium`) renders report.html,
writes a screenshot into the test's tmp folder, logs no console error, loads every embedded figure (no broken
image) and sorts a table when a header is clicked. Skipped with a reason when Chromium is not installed."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from genbound.report.runs import ReportOptions, build_report, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt install chromium)")

# Appended to a copy of the page (the report itself carries no test code): counts the images that did not
# load, clicks the first column header of the measures table twice and records the first cell each time.
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var t = document.querySelectorAll('table.sortable')[1], th = t.tHead.rows[0].cells[0];
  th.click(); var first = t.tBodies[0].rows[0].cells[0].textContent;
  th.click(); var again = t.tBodies[0].rows[0].cells[0].textContent;
  var out = document.createElement('pre'); out.id = 'probe';
  out.textContent = 'images=' + imgs.length + ' broken=' + broken + ' first=' + first + ' again=' + again;
  document.body.appendChild(out);
});
</script>"""


def _chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", "--disable-extensions", "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_report_renders_in_chromium(ckpt_dir, tmp_path):
    runs = [str(ckpt_dir(m, seed=s, steps=20)) for m in ("lora", "asym") for s in (0, 1, 2)]
    out = write_report(build_report(runs, ReportOptions(baseline="lora", bootstrap=200), progress=False),
                       tmp_path / "report")
    page = out / "report.html"
    shot = tmp_path / "report.png"
    proc = _chromium(f"--screenshot={shot}", "--window-size=1400,3000", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln and ("ERROR" in ln or "Uncaught" in ln)]
    assert not errors, errors
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri()).stdout
    m = re.search(r"images=(\d+) broken=(\d+) first=(.*?) again=(.*?)</pre>", dom)
    assert m, dom[-2000:]
    n_images = len(re.findall(r'<img alt=', page.read_text()))
    assert int(m.group(1)) == n_images >= 3 and int(m.group(2)) == 0
    titles = sorted(re.findall(r"<tr><td data-v=\"[^\"]*\">([^<]+)</td>", page.read_text().split("<h2>Measures")[1]
                               .split("</table>")[0]))
    assert {m.group(3), m.group(4)} == {titles[0], titles[-1]}  # ascending, then descending
    for run in runs:
        assert run in dom
