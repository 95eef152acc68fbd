from __future__ import annotations

import json
import shutil
from dataclasses import replace
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
    result = compress_pick(tiny_net, cfg, out=out, checkpoint=tiny_checkpoint, dc=dc, spec=QuantSpec(group=16),
                           finetune_steps=2, n=2, teacher_steps=2, progress=False)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["config_id"] == cfg.id == result["config_id"]
    comp = {r["stage"]: r["value"] for r in on_disk["quality_rows"] if r["metric"] == "compositional"}
    shipped = on_disk["shipped"]["model"]
    assert list(comp) == ["teacher 2 steps", "student 2 steps (before distillation)", "DMD 2 steps",
                          f"{shipped} 2 steps + int4"]
    assert shipped in ("DMD", "undistilled")  # which one wins on real scores: the test below
    for row in on_disk["quality_rows"]:
        assert set(row) == {"stage", "metric", "value", "n", "steps", "source"}
        assert row["n"] == 2 and (row["metric"] != "compositional" or 0.0 <= row["value"] <= 1.0)
    assert set(on_disk["latency"]) == {"device", "precision", "predicted_ms", "measured_ms", "how"}
    assert on_disk["runtime"]["onnxruntime_int4"]["median_ms"] > 0
    assert (out / "int4.onnx").exists() and (out / "student" / "model.safetensors").exists()
    assert on_disk["distill"]["mode"] == "DMD" and on_disk["distill"]["student_steps"] == 2
    quant = on_disk["quant"]
    assert (quant["method"], quant["side_bits"], quant["finetune_steps"]) == ("fit", 8, 2)


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
    result = compress_pick(tiny_net, cfg, out=out, checkpoint=tiny_checkpoint, dc=dc, mode="kdmd",
                           spec=QuantSpec("rtn", 4, 16), finetune_steps=0, n=2, teacher_steps=2, progress=False,
                           keep_distilled=keep)
    on_disk = json.loads((out / "results.json").read_text())
    assert result["shipped"]["model"] == on_disk["shipped"]["model"] == want
    assert ("kept on request" in on_disk["shipped"]["why"]) == keep
    assert result["quality_rows"][-1]["stage"] == f"{want} 2 steps + int4"
    exported = load_subdit(out / ("student" if want == "K-DMD" else "subdit"))
    other = load_subdit(out / ("subdit" if want == "K-DMD" else "student"))
    assert check_parity(out / "fp32.onnx", exported.dit)["max_abs_diff"] < 1e-4  # the shipped weights
    assert check_parity(out / "fp32.onnx", other.dit)["max_abs_diff"] > 1e-4  # not the other model's


def _no_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "measure_latency", lambda model, *, experiment, precision="fp32": {
        "device": "host", "precision": precision, "predicted_ms": None, "measured_ms": None, "how": "skipped in test"})


def test_a_student_distilled_earlier_is_scored_and_shipped_as_it_is(tiny_net: Supernet, tiny_checkpoint: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from hwnas.compress import check_parity, distill, from_supernet, load_subdit, terms

    _no_latency(monkeypatch)
    cfg = tiny_net.space.smallest()
    dc = terms("dmd", DistillConfig(steps=2, batch_size=2, critic_updates=1, student_steps=2, lr=1e-3))
    distill(tiny_net, from_supernet(tiny_net, cfg), out=tmp_path / "dmd", dc=dc, progress=False)
    out = tmp_path / "c"
    result = compress_pick(tiny_net, cfg, out=out, checkpoint=tiny_checkpoint, student=tmp_path / "dmd",
                           spec=QuantSpec("rtn", 4, 16), finetune_steps=0, n=2, teacher_steps=2, progress=False,
                           keep_distilled=True)
    stages = [r["stage"] for r in result["quality_rows"] if r["metric"] == "compositional"]
    assert stages == ["teacher 2 steps", "student 2 steps (before distillation)", "DMD 2 steps", "DMD 2 steps + int4"]
    assert result["distill"]["mode"] == "DMD" and result["distill"]["loaded_from"] == str(tmp_path / "dmd")
    assert not (out / "student").exists()  # nothing distilled again
    assert check_parity(out / "fp32.onnx", load_subdit(tmp_path / "dmd").dit)["max_abs_diff"] < 1e-4


def test_a_student_that_does_not_belong_is_refused_before_anything_is_written(tiny_net: Supernet, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    from hwnas.compress import distill, from_supernet, save_subdit

    _no_latency(monkeypatch)
    small, large = tiny_net.space.smallest(), tiny_net.space.largest()
    dc = DistillConfig(steps=2, batch_size=2, critic_updates=1, kd_teacher_steps=1, checkpoint_every=1)
    distill(tiny_net, from_supernet(tiny_net, small), out=tmp_path / "done", dc=dc, progress=False)
    distill(tiny_net, from_supernet(tiny_net, small), out=tmp_path / "half", dc=replace(dc, steps=1), progress=False)
    half = json.loads((tmp_path / "half" / "model.json").read_text())
    half["distill"]["distill"]["steps"] = 2  # as a run of 2 updates killed after its first checkpoint
    (tmp_path / "half" / "model.json").write_text(json.dumps(half))
    save_subdit(from_supernet(tiny_net, small), tmp_path / "plain")
    other = json.loads((tmp_path / "done" / "model.json").read_text())
    other["supernet_step"] = 999
    shutil.copytree(tmp_path / "done", tmp_path / "other")
    (tmp_path / "other" / "model.json").write_text(json.dumps(other))
    cases = {"plain": (small, "not a distilled student"), "done": (large, f"a student of {small.id}"),
             "half": (small, "stopped at update 1 of 2"), "other": (small, "distilled from another supernet"),
             "missing": (small, "not found")}
    for name, (cfg, message) in cases.items():
        out = tmp_path / f"out-{name}"
        with pytest.raises(ValueError, match=message):
            compress_pick(tiny_net, cfg, out=out, student=tmp_path / name, n=2, teacher_steps=2, progress=False)
        assert not out.exists(), name


def test_the_shipped_student_is_a_finished_distillation_of_the_shipped_latent_proxy() -> None:
    """checkpoints/shapes-latent-full-dmd2 is what `hwnas compress --student` takes for `full`."""
    from hwnas.compress.kdmd import load_student
    from hwnas.space import resolve_config
    from hwnas.train import load_supernet

    root = Path(__file__).resolve().parents[2] / "checkpoints"
    net = load_supernet(root / "shapes-latent")
    _, summary = load_student(root / "shapes-latent-full-dmd2", net, resolve_config(net.space, "full"))
    assert (summary["mode"], summary["student_steps"], summary["steps"]) == ("DMD", 2, 300)
