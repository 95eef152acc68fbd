from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from hwnas.report import load_run, summary_frame
from hwnas.search import run_search

ROOT = Path(__file__).resolve().parents[2]
FILES = ("settings.json", "trials.csv", "pareto.csv", "best.json", "presets.csv", "search_cost.json", "report.html",
         "pareto.png", "breakdown.png")


@pytest.fixture(scope="module")
def run_dir(tiny_env, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("report") / "run"
    run_search(tiny_env.settings(n_trials=16), out=out)
    return out


def test_run_directory_holds_every_file(run_dir: Path) -> None:
    for name in FILES:
        assert (run_dir / name).is_file(), name
    best = json.loads((run_dir / "best.json").read_text())
    for key in ("config", "config_id", "latency_ms", "latency_source", "quality", "quality_source", "device",
                "experiment", "steps", "precision"):
        assert key in best
    assert best["latency_ms"] <= json.loads((run_dir / "settings.json").read_text())["budget_ms"]
    pareto = pd.read_csv(run_dir / "pareto.csv")
    assert list(pareto["pick"]) == list(range(len(pareto))) and pareto["latency_ms"].is_monotonic_increasing
    assert {"config_id", "config_json"} <= set(pareto.columns)
    trials = pd.read_csv(run_dir / "trials.csv")
    assert {"config_id", "down.width", "up.attn", "quality", "latency_ms", "latency_source", "feasible"} <= set(trials)
    assert list((run_dir / "samples").glob("*.png"))
    assert summary_frame(load_run(run_dir))["headroom_ms"].min() >= 0


def test_picks_carry_their_latency_bound_and_probability_of_fitting(run_dir: Path) -> None:
    data = load_run(run_dir)
    df = summary_frame(data)
    budget = data.budget_ms
    assert len(df) and (df["latency_hi_ms"] >= df["latency_ms"]).all()
    assert (df["latency_hi_ms"] <= budget + 0.05).all()  # the search constrained the bound, not the point
    assert df["p_fit"].between(data.settings["confidence"] - 1e-3, 1.0).all()  # bound within budget: P >= conf
    page = (run_dir / "report.html").read_text()
    assert "latency_hi_ms" in page and "p_fit" in page and "upper bound of the latency" in page


def test_cli_report_rebuilds_from_files(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for name in ("report.html", "pareto.png", "breakdown.png"):
        (copy / name).unlink()
    (copy / "study.db").unlink()  # the report needs only the files, not the study
    cid = pd.read_csv(copy / "pareto.csv")["config_id"].iloc[0]
    (copy / "compress" / cid).mkdir(parents=True)
    (copy / "compress" / cid / "results.json").write_text(json.dumps({
        "config_id": cid,
        "quality_rows": [{"stage": "int4-kmeans", "metric": "val_loss", "value": 1.25, "n": 64, "steps": 4,
                          "source": "proxy"}],
        "shipped": {"model": "undistilled", "why": "synthetic choice"},
        "latency": {"device": "pixel8", "precision": "w4a16", "predicted_ms": 700.0, "measured_ms": 730.0,
                    "how": "synthetic test"}}))
    proc = subprocess.run([sys.executable, "-m", "hwnas.cli", "report", str(copy)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("report.html", "pareto.png", "breakdown.png"):
        assert (copy / name).is_file()
    page = (copy / "report.html").read_text()
    assert "int4-kmeans" in page and "synthetic test" in page and "synthetic choice" in page
    assert "estimated" in page and "val loss" in page
    assert not re.search(r"""(src|href)=["']https?://""", page)  # self-contained: no network


def test_report_of_a_non_run_is_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hwnas.cli", "report", str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "missing settings.json" in proc.stderr


_CHECK = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || e.type)); }, true);
window.addEventListener('load', function () {
  var broken = Array.prototype.filter.call(document.images, function (im) {
    return !(im.complete && im.naturalWidth > 0); }).length;
  var out = document.createElement('pre'); out.id = 'hwnas-check';
  out.textContent = JSON.stringify({images: document.images.length, broken: broken, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium not found (apt-get install chromium; .ci/run installs it)")
    page = (run_dir / "report.html").read_text()
    checked = tmp_path / "checked.html"  # the report with an error/broken-image probe injected first thing
    checked.write_text(page.replace("<head>", "<head>" + _CHECK, 1))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                              "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="hwnas-check">(.*?)</pre>', dom.stdout)
    assert match, f"Chromium produced no DOM: {dom.stderr[-500:]}"
    result = json.loads(match.group(1).replace("&quot;", '"'))
    assert result["images"] >= 3 and result["broken"] == 0 and result["errors"] == [], result
    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,1800",
                        f"--screenshot={shot}", (run_dir / "report.html").as_uri()], capture_output=True,
                       timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000


@pytest.mark.parametrize(("source", "css"), [
    ("measured", "measured"), ("estimated", "estimated"), ("mixed", "mixed"),
    ("measured on znver4 (AMD EPYC, family 25, model 17), running on rocketlake (Intel Xeon, family 6, model 167)",
     "other-cpu"),
])
def test_latency_source_is_styled_by_kind(source: str, css: str) -> None:
    """Timings from another CPU keep their label and are not styled as measured on this one."""
    from hwnas.report.html import _source

    assert _source(source) == f'<span class="{css}">{source}</span>'
