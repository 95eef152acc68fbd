"""`hwnas report --compare`: fronts of several runs in one page and a CSV; what is not comparable is refused;
the page renders in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from test_report import _CHECK, CHROMIUM_FLAGS, _chromium

from hwnas.cli import main
from hwnas.report import NotComparableError, build_comparison, load_comparison
from hwnas.search import run_search


@pytest.fixture(scope="module")
def runs(tiny_env, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Two samplers on one budget, and a run rated on another validation set (another quality source)."""
    root = tmp_path_factory.mktemp("compare")
    out = {}
    overrides_by_run: dict[str, dict[str, object]] = {"nsga2": {"sampler": "nsga2"}, "random": {"sampler": "random"},
                                                      "val4": {"sampler": "nsga2", "val_images": 4}}
    for name, overrides in overrides_by_run.items():
        run_search(tiny_env.settings(n_trials=8, **overrides), out=root / name)
        out[name] = root / name
    return out


def test_compare_overlays_samplers(runs: dict[str, Path], tmp_path: Path) -> None:
    cmp = load_comparison([runs["nsga2"], runs["random"]])
    assert cmp.varies == ("sampler",) and cmp.labels == ("nsga2", "random")
    fronts = {label: pd.read_csv(runs[label] / "pareto.csv") for label in cmp.labels}
    assert len(cmp.fronts) == sum(len(f) for f in fronts.values())
    for label, front in fronts.items():
        mine = cmp.fronts[cmp.fronts["run"] == label]
        assert list(mine["config_id"]) == list(front["config_id"])
    assert (cmp.summary["hypervolume"] > 0).all() and list(cmp.summary["state"]) == ["finished", "finished"]
    page, table = build_comparison([runs["nsga2"], runs["random"]], out=tmp_path / "cmp" / "samplers.html")
    assert table == tmp_path / "cmp" / "samplers.csv" and (tmp_path / "cmp" / "samplers.png").is_file()
    pd.testing.assert_frame_equal(pd.read_csv(table), cmp.fronts.reset_index(drop=True), check_dtype=False)
    html = page.read_text()
    assert "by sampler" in html and not re.search(r"""(src|href)=["']https?://""", html)


def test_compare_refuses_another_quality_source(runs: dict[str, Path]) -> None:
    with pytest.raises(NotComparableError, match="different sources.*n=8.*n=4"):
        load_comparison([runs["nsga2"], runs["val4"]])


def test_compare_refuses_another_experiment(runs: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(runs["random"], other)
    settings = json.loads((other / "settings.json").read_text())
    (other / "settings.json").write_text(json.dumps({**settings, "experiment_name": "snapgenpp-1024"}))
    result = CliRunner().invoke(main, ["report", "--compare", str(runs["nsga2"]), str(other),
                                       "--out", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "different experiments ('tiny-16' vs 'snapgenpp-1024')" in result.stderr
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["report", "--compare", "{a}"], "needs at least two runs"),
    (["report", "--compare", "{a}", "{a}"], "is given twice"),
    (["report", "{a}", "{a}"], "give one RUN_DIR, or --compare"),
    (["report", "--compare", "{a}", "{tmp}"], "not a search run directory"),
    (["report", "--compare", "{a}", "{b}", "--out", "{tmp}/page.txt"], "is an .html file"),
])
def test_compare_mistakes_are_one_line(runs: dict[str, Path], tmp_path: Path, args: list[str], message: str) -> None:
    argv = [a.format(a=runs["nsga2"], b=runs["random"], tmp=tmp_path) for a in args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_compare_page_renders_in_headless_chromium(runs: dict[str, Path], tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium not found (apt-get install chromium; .ci/run installs it)")
    result = CliRunner().invoke(main, ["report", "--compare", str(runs["nsga2"]), str(runs["random"]),
                                       "--out", str(tmp_path / "compare.html")])
    assert result.exit_code == 0, result.output
    checked = tmp_path / "checked.html"
    checked.write_text((tmp_path / "compare.html").read_text().replace("<head>", "<head>" + _CHECK, 1))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                              "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="hwnas-check">(.*?)</pre>', dom.stdout)
    assert match, f"Chromium produced no DOM: {dom.stderr[-500:]}"
    probe = json.loads(match.group(1).replace("&quot;", '"'))
    assert probe["images"] == 1 and probe["broken"] == 0 and probe["errors"] == [], probe
    assert "Pareto fronts" in dom.stdout and "nsga2" in dom.stdout and "random" in dom.stdout


def test_quality_basis_ignores_the_caveat_but_not_the_checkpoint(runs: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(runs["random"], other)
    settings = json.loads((other / "settings.json").read_text())
    remark = {**settings, "quality_source": settings["quality_source"] + "; caveat: a remark the code adds"}
    (other / "settings.json").write_text(json.dumps(remark))
    assert load_comparison([runs["nsga2"], other]).labels == ("nsga2", "random")
    retrained = {**remark, "identity": {**settings["identity"], "checkpoint_sha256": "0" * 64}}
    (other / "settings.json").write_text(json.dumps(retrained))
    with pytest.raises(NotComparableError, match="checkpoint_sha256"):
        load_comparison([runs["nsga2"], other])
