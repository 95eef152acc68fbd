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
    assert shipped in ("K-DMD", "undistilled")  # which one wins on real scores: the test below
    for row in on_disk["quality_rows"]:
        assert set(row) == {"stage", "metric", "value", "n", "steps", "source"}
        assert row["n"] == 2 and (row["metric"] != "compositional" or 0.0 <= row["value"] <= 1.0)
    assert set(on_disk["latency"]) == {"device", "precision", "predicted_ms", "measured_ms", "how"}
    assert on_disk["runtime"]["onnxruntime_int4"]["median_ms"] > 0
    assert (out / "int4.onnx").exists() and (out / "kdmd" / "model.safetensors").exists()


@pytest.mark.parametrize(("kdmd_score", "keep", "want"), [
    (0.8, False, "K-DMD"),  # distillation helped: the student is shipped
    (0.2, False, "undistilled"),  # distillation hurt: the sub-DiT before distillation is shipped
    (0.2, True, "K-DMD"),  # hurt, but kept on request
])
def test_the_better_scored_model_is_shipped(tiny_net: Supernet, tiny_checkpoint: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, kdmd_score: float, keep: bool,
                                            want: str) -> None:
    from hwnas.compress import check_parity, load_subdit

    monkeypatch.setattr(pipeline, "measure_latency", lambda model, *, experiment, precision="fp32": {
        "device": "host", "precision": precision, "predicted_ms": None, "measured_ms": None, "how": "skipped in test"})
    scores = {"K-DMD": kdmd_score, "student": 0.5, "teacher": 0.6, "undistilled": 0.5}  # no ties

    def fake_quality(model, cfg, *, stage, metric, n, steps, cfg_scale, checkpoint, seed=0):  # type: ignore[no-untyped-def]
        value = scores[stage.split()[0]] if metric == "compositional" else 100.0
        return {"stage": stage, "metric": metric, "value": value, "n": n, "steps": steps, "source": "test"}

    monkeypatch.setattr(pipeline, "quality_row", fake_quality)
    cfg = tiny_net.space.smallest()
    out = tmp_path / "c"
    dc = DistillConfig(steps=2, batch_size=2, critic_updates=1, kd_teacher_steps=1, lr=1e-3)
    result = compress_pick(tiny_net, cfg, out=out, checkpoint=tiny_checkpoint, dc=dc, spec=QuantSpec("rtn", 4, 16),
                           n=2, teacher_steps=2, progress=False, keep_distilled=keep)
    on_disk = json.loads((out / "results.json").read_text())
    assert result["shipped"]["model"] == on_disk["shipped"]["model"] == want
    assert ("kept on request" in on_disk["shipped"]["why"]) == keep
    assert result["quality_rows"][-1]["stage"] == f"{want} 4 steps + int4"
    exported = load_subdit(out / ("kdmd" if want == "K-DMD" else "subdit"))
    other = load_subdit(out / ("subdit" if want == "K-DMD" else "kdmd"))
    assert check_parity(out / "fp32.onnx", exported.dit)["max_abs_diff"] < 1e-4  # the shipped weights
    assert check_parity(out / "fp32.onnx", other.dit)["max_abs_diff"] > 1e-4  # not the other model's
