"""Deployable artefacts (`hwnas export --format`): format parsing, the missing-package line, whole-or-
nothing folders, the calibration row in MEASURE.md, and, where the runtime is installed, a real
conversion (ExecuTorch runs here: parity with PyTorch; Core ML only converts here: its spec)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hwnas.cli import main
from hwnas.compress import SubDiT, deploy, from_supernet
from hwnas.compress.deploy import (
    MissingRuntimeError,
    UnsupportedOpError,
    export_artefacts,
    load_runner,
    parse_formats,
    require_runtimes,
)
from hwnas.latency import load_profile
from hwnas.latency.calibrate import read_measurements
from hwnas.model import example_inputs
from hwnas.train import Supernet


@pytest.fixture
def tiny_sub(tiny_net: Supernet) -> SubDiT:
    """The smallest sub-DiT of the tiny space (4 blocks: the quickest to lower)."""
    return from_supernet(tiny_net, tiny_net.space.smallest())


@pytest.mark.parametrize(("values", "expected"), [
    (["onnx"], ("onnx",)),
    (["coreml,onnx", "executorch"], ("coreml", "onnx", "executorch")),
    (["onnx", "onnx, coreml"], ("onnx", "coreml")),
    ([], ()),
])
def test_parse_formats(values: list[str], expected: tuple[str, ...]) -> None:
    assert parse_formats(values) == expected


@pytest.mark.parametrize("bad", ["tflite", "onnx,", "CoreML"])
def test_parse_formats_quotes_an_unknown_name(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown export format"):
        parse_formats([bad])


def _hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make `import <module>` fail as if the package were not installed."""
    real = importlib.import_module

    def fake(name: str, package: str | None = None) -> Any:
        if name == module or name.startswith(module + "."):
            raise ModuleNotFoundError(f"No module named '{module}'", name=module)
        return real(name, package)

    monkeypatch.setattr(deploy.importlib, "import_module", fake)


@pytest.mark.parametrize(("fmt", "install"), [("coreml", "pip install 'hwnas[coreml]'"),
                                              ("executorch", "pip install 'hwnas[executorch]'"),
                                              ("onnx", "pip install onnxruntime (a dependency of hwnas)")])
def test_a_missing_package_names_its_pip_extra(monkeypatch: pytest.MonkeyPatch, fmt: str, install: str) -> None:
    [parsed] = parse_formats([fmt])
    _hide(monkeypatch, deploy.RUNTIMES[parsed].module)
    with pytest.raises(MissingRuntimeError) as info:
        require_runtimes([parsed])
    assert str(info.value).startswith(f"--format {fmt} needs ") and str(info.value).endswith(install)


def test_cli_missing_package_is_one_line_exit_2_before_anything_is_written(
        monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path, tmp_path: Path) -> None:
    _hide(monkeypatch, "coremltools")
    out = tmp_path / "m"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "--config", "smallest",
                                       "--out", str(out), "--format", "onnx", "--format", "coreml"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "Error: --format coreml needs coremltools, which cannot be imported (No module named 'coremltools'): "
        "pip install 'hwnas[coreml]'"]
    assert not out.exists()


def test_a_failed_export_leaves_no_half_written_folder(monkeypatch: pytest.MonkeyPatch, tiny_sub: SubDiT,
                                                        tmp_path: Path) -> None:
    (old := tmp_path / "onnx").mkdir()
    (old / "model.onnx").write_bytes(b"the previous export")

    def half(fmt: str, model: Any, folder: Path, **_: Any) -> dict[str, Any]:
        (folder / "model.onnx").write_bytes(b"half of it")
        raise UnsupportedOpError("ONNX cannot express op 'aten.frobnicate'")

    monkeypatch.setattr(deploy, "_export_one", half)
    with pytest.raises(UnsupportedOpError, match="frobnicate"):
        export_artefacts(tiny_sub, tmp_path, ["onnx"])
    with pytest.raises(UnsupportedOpError):
        export_artefacts(tiny_sub, tmp_path / "new", ["onnx"])
    assert sorted(os.listdir(tmp_path)) == ["new", "onnx"] and os.listdir(tmp_path / "new") == []
    assert os.listdir(old) == ["model.onnx"]
    assert (old / "model.onnx").read_bytes() == b"the previous export"


def test_onnx_artefact_and_its_calibration_row(tiny_sub: SubDiT, tmp_path: Path) -> None:
    [art] = export_artefacts(tiny_sub, tmp_path / "out", ["onnx"])
    assert art.folder == tmp_path / "out" / "onnx"
    assert sorted(os.listdir(art.folder)) == ["MEASURE.md", "artefact.json", "model-w4.onnx", "model.onnx"]
    assert art.files == {name: (art.folder / name).stat().st_size for name in ("model.onnx", "model-w4.onnx")}
    assert json.loads((art.folder / "artefact.json").read_text())["config_id"] == tiny_sub.cfg.id
    assert art.details["parity_max_abs"] < 1e-4
    w4 = art.details["palettized"]
    assert w4["parity_max_abs_vs_dequantized"] < 1e-4 and 4 < w4["avg_bits"] < 6  # tiny layers: palettes weigh
    assert art.files["model-w4.onnx"] < art.files["model.onnx"]
    inputs = example_inputs(tiny_sub.space, seed=1)
    with torch.no_grad():
        expected = tiny_sub.dit(*inputs).numpy()
    assert np.abs(load_runner("onnx", art.folder / "model.onnx")(inputs) - expected).max() < 1e-4
    _check_rows(art.folder / "MEASURE.md", tiny_sub, tmp_path, n=1)


def test_onnx_palettes_other_than_4_or_8_bits_are_skipped_with_a_reason(tiny_sub: SubDiT, tmp_path: Path) -> None:
    [art] = export_artefacts(tiny_sub, tmp_path, ["onnx"], palettize_bits=6)
    assert sorted(art.files) == ["model.onnx"] and "4 or 8" in art.details["palettized_skipped"]


def _check_rows(notes: Path, sub: SubDiT, tmp_path: Path, *, n: int) -> None:
    """The CSV block of MEASURE.md, `<ms>` filled in, is what `hwnas lut calibrate` reads."""
    text = notes.read_text()
    block = text.split("```\nconfig,ms,per,steps,precision,runtime,note\n", 1)[1].split("```", 1)[0]
    csv_path = tmp_path / "measured.csv"
    csv_path.write_text("config,ms,per,steps,precision,runtime,note\n" + block.replace("<ms>", "12.5"))
    rows = read_measurements(csv_path, space=sub.space, profile=load_profile("pixel8-cpu"))
    assert len(rows) == n and all(r.config == sub.cfg and r.ms == 12.5 and r.per == "step" for r in rows)


@pytest.mark.slow
def test_executorch_runs_here_and_matches_pytorch(tiny_sub: SubDiT, tmp_path: Path) -> None:
    pytest.importorskip("executorch")
    [art] = export_artefacts(tiny_sub, tmp_path, ["executorch"])
    assert sorted(os.listdir(art.folder)) == ["MEASURE.md", "artefact.json", "model.pte"]
    assert art.details["delegated_calls"] > 0
    run = load_runner("executorch", art.folder / "model.pte", threads=1)
    for seed in (0, 1):
        inputs = example_inputs(tiny_sub.space, seed=seed)
        with torch.no_grad():
            expected = tiny_sub.dit(*inputs).numpy()
        got = run(inputs)
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-4
    _check_rows(art.folder / "MEASURE.md", tiny_sub, tmp_path, n=1)


@pytest.mark.slow
def test_coreml_converts_with_the_expected_spec(tiny_sub: SubDiT, tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    [art] = export_artefacts(tiny_sub, tmp_path, ["coreml"], palettize_bits=4)
    assert sorted(art.files) == ["model-w4.mlpackage", "model.mlpackage"]
    d = art.details
    shapes = {i["name"]: i["shape"] for i in d["spec_inputs"]}
    assert shapes == {i["name"]: i["shape"] for i in d["inputs"]} and set(shapes) == {"x", "t", "text", "text_mask"}
    assert {i["dtype"] for i in d["spec_inputs"]} == {"float32"}
    assert d["outputs"] == [{"name": "v", "shape": list(example_inputs(tiny_sub.space)[0].shape), "dtype": "float32"}]
    assert d["deployment_target"] == "iOS18" and d["frontend"] == "torch.export"
    assert {"linear", "scaled_dot_product_attention", "layer_norm"} <= set(d["mil_ops"])
    assert d["palettized"]["precision"] == "w4a16"
    _check_rows(art.folder / "MEASURE.md", tiny_sub, tmp_path, n=2)


@pytest.mark.parametrize(("exc", "logged", "names"), [
    (NotImplementedError("Unsupported fx node and_1, kind __and__"), [], "op '__and__' (node and_1)"),
    (TypeError("only 0-dimensional arrays can be converted to Python scalars"),
     ["\n\nERROR - converting 'int' op (located at: 'model/0/attn/363'):\n"], "op 'int' at model/0/attn/363"),
    (RuntimeError("something else"), [], "an op: RuntimeError: something else"),
])
def test_coreml_errors_name_the_op_and_the_runtime(exc: BaseException, logged: list[str], names: str) -> None:
    from hwnas.compress.deploy_coreml import unsupported_op

    message = str(unsupported_op(exc, logged, frontend="trace", version="9.0"))
    assert message.startswith("Core ML (coremltools 9.0, torch.trace)") and names in message


def test_executorch_errors_name_the_op() -> None:
    from hwnas.compress.deploy_executorch import unsupported_op

    exc = RuntimeError("Missing out variants: {'aten::_frobnicate'}\nmore")
    assert str(unsupported_op(exc, version="1.5.1")) == (
        "ExecuTorch 1.5.1 (XNNPACK) cannot lower op 'aten::_frobnicate': RuntimeError: Missing out variants: "
        "{'aten::_frobnicate'}")


def test_core_ml_cannot_run_here(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot run on this host"):
        load_runner("coreml", tmp_path / "model.mlpackage")



def test_export_takes_a_saved_sub_dit_and_refuses_a_second_source(tiny_checkpoint: Path, tiny_sub: SubDiT,
                                                                   tmp_path: Path) -> None:
    from hwnas.compress import save_subdit

    save_subdit(tiny_sub, tmp_path / "student")
    out = tmp_path / "m"
    result = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "student"), "--out", str(out),
                                       "--format", "onnx", "--palettize-bits", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config_id"] == tiny_sub.cfg.id
    runner = load_runner("onnx", out / "onnx" / "model.onnx")
    inputs = example_inputs(tiny_sub.space, batch=1, seed=0)
    with torch.no_grad():
        want = tiny_sub.dit(*inputs).numpy()
    assert np.abs(runner(inputs) - want).max() < 1e-4  # the saved weights, not the supernet's
    both = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "student"), "--config", "smallest",
                                     "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "n")])
    assert both.exit_code == 2 and "one of them" in both.stderr and not (tmp_path / "n").exists()


def test_compress_checks_the_export_packages_before_it_distills(monkeypatch: pytest.MonkeyPatch,
                                                                 tiny_checkpoint: Path, tmp_path: Path) -> None:
    _hide(monkeypatch, "coremltools")
    out = tmp_path / "c"
    result = CliRunner().invoke(main, ["compress", "--checkpoint", str(tiny_checkpoint), "--config", "smallest",
                                       "--out", str(out), "--format", "coreml"])
    assert result.exit_code == 2 and "pip install 'hwnas[coreml]'" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_is_spelled_out_for_executorch_with_its_approximation(approximate: str) -> None:
    from hwnas.compress.deploy_executorch import spell_out_tanh_gelu

    class Gelu(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.gelu(x, approximate=approximate)

    x = torch.linspace(-8, 8, 4001)
    program = spell_out_tanh_gelu(torch.export.export(Gelu(), (x,), strict=False))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("gelu" in t for t in targets)
    got = program.module()(x)
    assert torch.allclose(got, Gelu()(x), atol=1e-6)
    other = torch.nn.functional.gelu(x, approximate="none" if approximate == "tanh" else "tanh")
    assert (got - other).abs().max() > 1e-4  # the two GELUs differ by this much: the check can fail
