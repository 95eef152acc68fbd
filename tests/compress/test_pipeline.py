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
    stages = [r["stage"] for r in on_disk["quality_rows"] if r["metric"] == "compositional"]
    assert stages == ["teacher 2 steps", "student 4 steps (before distillation)", "K-DMD 4 steps",
                      "K-DMD 4 steps + int4"]
    for row in on_disk["quality_rows"]:
        assert set(row) == {"stage", "metric", "value", "n", "steps", "source"}
        assert row["n"] == 2 and (row["metric"] != "compositional" or 0.0 <= row["value"] <= 1.0)
    assert set(on_disk["latency"]) == {"device", "precision", "predicted_ms", "measured_ms", "how"}
    assert on_disk["runtime"]["onnxruntime_int4"]["median_ms"] > 0
    assert (out / "int4.onnx").exists() and (out / "kdmd" / "model.safetensors").exists()
