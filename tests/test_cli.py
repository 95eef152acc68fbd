from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from hwnas import __version__
from hwnas.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = str(ROOT / "experiments/snapgenpp-1024.toml")


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_help_and_version() -> None:
    code, out = _run("--help")
    assert code == 0 and "space" in out
    code, out = _run("--version")
    assert code == 0 and __version__ in out


def test_space_show_json_presets_and_file(tmp_path: Path) -> None:
    sizes = {}
    for preset in ("tiny", "small", "full"):
        code, out = _run("space", "show", "--experiment", DEPLOY, "--preset", preset, "--json")
        assert code == 0, out
        info = json.loads(out)
        assert info["params"] > 0 and info["flops_per_step"] > 0
        sizes[preset] = info["params"]
    assert sizes["tiny"] < sizes["small"] < sizes["full"]
    path = tmp_path / "small.json"
    path.write_text(json.dumps(info["config"]))
    code, out = _run("space", "show", "--experiment", DEPLOY, "--config", str(path), "--json")
    assert code == 0 and json.loads(out)["params"] == sizes["full"]


def test_space_show_user_errors_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"down": {}}')
    for args in (
        ["space", "show", "--experiment", DEPLOY],  # neither preset nor config
        ["space", "show", "--experiment", DEPLOY, "--config", str(bad)],
        ["space", "show", "--experiment", str(tmp_path / "missing.toml"), "--preset", "small"],
    ):
        code, out = _run(*args)
        assert code == 2, (args, out)
        assert "Traceback" not in out


def test_space_sample_is_seeded(tmp_path: Path) -> None:
    code, first = _run("space", "sample", "--n", "3", "--seed", "4", "--out", str(tmp_path))
    assert code == 0
    _, second = _run("space", "sample", "--n", "3", "--seed", "4")
    assert first == second
    assert len(list(tmp_path.glob("*.json"))) == 3


# Model commands on the tiny checkpoint (tests/conftest.py), never the default one ----------------


def test_sample_writes_the_grid(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "grid.png"
    code, text = _run("sample", "--checkpoint", str(tiny_checkpoint), "--config", "smallest",
                      "--prompt", "a red circle", "--prompt", "a blue square", "--n", "2", "--steps", "1",
                      "-o", str(out))
    assert code == 0, text
    assert text.startswith(f"wrote {out} (4 images") and "1 euler steps" in text
    assert Image.open(out).size[0] > 0


def test_eval_prints_the_metric_as_json(tiny_checkpoint: Path) -> None:
    code, text = _run("eval", "--checkpoint", str(tiny_checkpoint), "--config", "smallest", "--metric", "compositional",
                      "--n", "2", "--steps", "1", "--json")
    assert code == 0, text
    result = json.loads(text)
    assert result["metric"] == "compositional" and result["n"] == 2 and 0.0 <= result["value"] <= 1.0
    assert sum(result["failures"].values()) == round(2 * (1 - result["value"]))
    code, text = _run("eval", "--checkpoint", str(tiny_checkpoint), "--config", "smallest", "--n", "2",
                      "--steps", "1", "--split", "train")
    assert code == 0, text
    assert "2 train shapes prompts" in text and "failed prompts by first unmet requirement" in text


def test_eval_passes_the_time_shift_to_the_sampler(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hwnas.metrics.evaluate as ev

    shifts = []
    real = ev.generate

    def spy(*args: object, **kwargs: Any) -> torch.Tensor:
        shifts.append(kwargs["shift"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "generate", spy)
    code, text = _run("eval", "--checkpoint", str(tiny_checkpoint), "--config", "smallest", "--n", "2",
                      "--steps", "2", "--shift", "3", "--json")
    assert code == 0, text
    result = json.loads(text)
    assert shifts == [3.0] and result["shift"] == 3.0 and "time shift 3.0" in result["source"]


@pytest.mark.parametrize(("flags", "method", "side_bits"), [
    (["--method", "rtn", "--group", "16", "--side-bits", "16"], "rtn", 16),
    ([], "fit", 8),  # the defaults
])
def test_quantize_reports_bits_and_writes_int4_onnx(tiny_checkpoint: Path, tmp_path: Path, flags: list[str],
                                                    method: str, side_bits: int) -> None:
    onnx_path = tmp_path / "int4.onnx"
    code, text = _run("quantize", "--checkpoint", str(tiny_checkpoint), "--config", "smallest", *flags,
                      "--n", "2", "--steps", "1", "--finetune-steps", "2", "--onnx", str(onnx_path), "--json")
    assert code == 0, text
    result = json.loads(text)
    assert result["method"] == method and 4.0 <= result["avg_bits"] < 8.0
    assert result["side_bits"] == side_bits
    assert 0 < result["bytes"] < result["bytes_fp16"]
    assert 0.0 <= result["acc_fp32"] <= 1.0 and 0.0 <= result["acc_quant"] <= 1.0
    assert onnx_path.stat().st_size > 0 and result["parity"]["max_abs_diff"] < 1e-2


def test_compress_writes_results_and_the_shipped_model(tiny_checkpoint: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import hwnas.compress.pipeline as pipeline

    # host TVM timing of a pick is tested in hwnas.latency; the tiny experiment has no LUT
    monkeypatch.setattr(pipeline, "measure_latency", lambda model, *, experiment, precision="fp32": {
        "device": "host", "precision": precision, "predicted_ms": None, "measured_ms": None, "how": "skipped in test"})
    out = tmp_path / "c"
    code, text = _run("compress", "--checkpoint", str(tiny_checkpoint), "--config", "smallest", "--out", str(out),
                      "--distill-steps", "1", "--student-steps", "2", "--n", "2", "--format", "onnx",
                      "--finetune-steps", "2", "--quiet")
    assert code == 0, text
    printed = json.loads(text)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["distill"]["student_steps"] == 2 and on_disk["quant"]["finetune_steps"] == 2
    assert {"student 2 steps (before distillation)", "DMD 2 steps"} <= {r["stage"] for r in on_disk["quality_rows"]}
    assert printed["results"] == str(out / "results.json")
    assert printed["shipped"] == on_disk["shipped"] and on_disk["shipped"]["model"] in ("DMD", "undistilled")
    assert printed["quality_rows"] == on_disk["quality_rows"]
    assert (out / "int4.onnx").stat().st_size > 0 and (out / "fp32.onnx").stat().st_size > 0
    assert printed["artefacts"] == on_disk["artefacts"]
    assert str(out / "onnx" / "model.onnx") in on_disk["artefacts"]["onnx"]
    assert (out / "onnx" / "MEASURE.md").is_file()


def test_cli_choices_are_the_library_s() -> None:
    from typing import get_args

    from hwnas.cli.quality import METRICS, PROMPT_SPLITS
    from hwnas.data.shapes import Split
    from hwnas.metrics.evaluate import Metric

    assert METRICS == get_args(Metric)
    assert sorted(PROMPT_SPLITS) == sorted(get_args(Split))


def test_the_command_line_loads_without_torch() -> None:
    """`hwnas --help` and the option defaults need no torch (seconds saved on every command); the
    compress package exports the rest of its names lazily, all of them."""
    import subprocess
    import sys

    code = ("import sys, hwnas.cli, hwnas.compress as c; "
            "assert set(c.__all__) == {'DistillConfig', 'QuantSpec', 'terms'} | set(c._MODULE_OF); "
            "print(sorted(m for m in ('torch', 'tvm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_native_library_chatter_is_dropped_and_other_warnings_are_kept(caplog: pytest.LogCaptureFixture) -> None:
    from hwnas.logs import quiet_native_chatter

    quiet_native_chatter()
    quiet_native_chatter()  # idempotent: one filter per logger
    log = logging.getLogger("coremltools")
    with caplog.at_level(logging.WARNING):
        log.warning("Failed to load _MLModelProxy: No module named 'coremltools.libcoremlpython'")
        log.warning("Torch version 2.13.0+cpu has not been tested.")
        logging.getLogger("torchao").warning("Failed to load _C_mxfp8.so")
    assert [r.getMessage() for r in caplog.records] == ["Torch version 2.13.0+cpu has not been tested."]
    assert len(log.filters) == 1
