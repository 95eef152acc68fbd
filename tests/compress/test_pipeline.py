from __future__ import annotations

import json
from pathlib import Path

import pytest

import hwnas.compress.pipeline as pipeline
from hwnas.compress import DistillConfig, QuantSpec, compress_pick
from hwnas.train import Supernet


def test_results_json_schema(tiny_net: Supernet, tiny_checkpoint: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    # host TVM timing belongs to hwnas.latency (tested there); keep this test fast and offline
    monkeypatch.setattr(pipeline, "measure_latency", lambda model, *, experiment, precision="fp32": {
        "device": "host", "precision": precision, "predicted_ms": None, "measured_ms": None, "how": "skipped in test"})
    cfg = tiny_net.space.smallest()
    out = tmp_path / "run" / "compress" / cfg.id
    dc = DistillConfig(steps=1, batch_size=2, critic_updates=1, kd_teacher_steps=1)
    result = compress_pick(tiny_net, cfg, out=out, checkpoint=tiny_checkpoint, dc=dc, spec=QuantSpec("rtn", 4, 16),
                           n=2, teacher_steps=2, progress=False)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["config_id"] == cfg.id == result["config_id"]
    comp = {r["stage"]: r["value"] for r in on_disk["quality_rows"] if r["metric"] == "compositional"}
    shipped = on_disk["shipped"]["model"]
    assert list(comp) == ["teacher 2 steps", "student 4 steps (before distillation)", "K-DMD 4 steps",
                          f"{shipped} 4 steps + int4"]
    distilled, undistilled = comp["K-DMD 4 steps"], comp["student 4 steps (before distillation)"]
    assert shipped == ("K-DMD" if distilled > undistilled else "undistilled" if distilled < undistilled
                       else shipped)  # ties go to fd_ref
    for row in on_disk["quality_rows"]:
        assert set(row) == {"stage", "metric", "value", "n", "steps", "source"}
        assert row["n"] == 2 and (row["metric"] != "compositional" or 0.0 <= row["value"] <= 1.0)
    assert set(on_disk["latency"]) == {"device", "precision", "predicted_ms", "measured_ms", "how"}
    assert on_disk["runtime"]["onnxruntime_int4"]["median_ms"] > 0
    assert (out / "int4.onnx").exists() and (out / "kdmd" / "model.safetensors").exists()


@pytest.mark.parametrize("keep", [False, True])
def test_a_student_worse_than_its_init_is_not_shipped(tiny_net: Supernet, tiny_checkpoint: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, keep: bool) -> None:
    from hwnas.compress import check_parity, load_subdit

    monkeypatch.setattr(pipeline, "measure_latency", lambda model, *, experiment, precision="fp32": {
        "device": "host", "precision": precision, "predicted_ms": None, "measured_ms": None, "how": "skipped in test"})
    scores = {"K-DMD": 0.2, "student": 0.5, "teacher": 0.6, "undistilled": 0.5}

    def fake_quality(model, cfg, *, stage, metric, n, steps, cfg_scale, checkpoint, seed=0):  # type: ignore[no-untyped-def]
        value = scores[stage.split()[0]] if metric == "compositional" else 100.0
        return {"stage": stage, "metric": metric, "value": value, "n": n, "steps": steps, "source": "test"}

    monkeypatch.setattr(pipeline, "quality_row", fake_quality)
    cfg = tiny_net.space.smallest()
    out = tmp_path / "c"
    dc = DistillConfig(steps=2, batch_size=2, critic_updates=1, kd_teacher_steps=1, lr=1e-3)
    result = compress_pick(tiny_net, cfg, out=out, checkpoint=tiny_checkpoint, dc=dc, spec=QuantSpec("rtn", 4, 16),
                           n=2, teacher_steps=2, progress=False, keep_distilled=keep)
    want = "K-DMD" if keep else "undistilled"
    assert result["shipped"]["model"] == want
    assert result["quality_rows"][-1]["stage"] == f"{want} 4 steps + int4"
    exported = load_subdit(out / ("kdmd" if keep else "subdit"))
    other = load_subdit(out / ("subdit" if keep else "kdmd"))
    assert check_parity(out / "fp32.onnx", exported.dit)["max_abs_diff"] < 1e-4  # the shipped weights
    assert check_parity(out / "fp32.onnx", other.dit)["max_abs_diff"] > 1e-4  # not the other model's
