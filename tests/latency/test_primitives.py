from __future__ import annotations

import random
from pathlib import Path

import pytest

from hwnas.cost import op_flops, op_params, ops
from hwnas.latency import ATTENTION_LOWERINGS, kernels, load_profile, op_primitives, prior_params
from hwnas.latency.estimate import CPU_TVM_GEMM_EFFICIENCY, estimate_kernel_ms, library_gemm
from hwnas.space import load_space

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("experiment", ["experiments/snapgenpp-1024.toml", "experiments/shapes-32.toml"])
@pytest.mark.parametrize("lowering", ATTENTION_LOWERINGS)
def test_primitives_add_up_to_the_cost_model(experiment: str, lowering: str) -> None:
    space = load_space(ROOT / experiment)
    rng = random.Random(0)
    for cfg in [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(20))]:
        for op in ops(cfg, space):
            prims = op_primitives(op, lowering)  # type: ignore[arg-type]
            assert sum(p.flops for p in prims if p.kind != "elementwise") == op_flops(op)
            assert sum(p.weight_params for p in prims) == op_params(op)


def test_materialized_attention_costs_more_in_attention_and_gathers_local_windows() -> None:
    space = load_space(ROOT / "experiments/snapgenpp-1024.toml")
    block = next(op for op in ops(space.preset("small"), space) if op.kind == "down_block")
    assert block.attn == "assa"
    fused, mat = op_primitives(block, "fused"), op_primitives(block, "materialized")
    for kind in ("linear", "conv"):
        assert [p for p in fused if p.kind == kind] == [p for p in mat if p.kind == kind]
    att = [sum(p.act_elements for p in prims if p.kind == "attention") for prims in (fused, mat)]
    assert att[1] > 2 * att[0]
    assert ([sum(p.flops for p in prims if p.kind != "elementwise") for prims in (fused, mat)]
            == [sum(p.flops for p in fused if p.kind != "elementwise")] * 2)
    # the local branch's key and value windows: (2r + 1) x tokens rows, gathered, then copied out to every head
    ew_fused, ew_mat = ([p for p in prims if p.kind == "elementwise"] for prims in (fused, mat))
    extra = [p for p in ew_mat if p not in ew_fused]
    window = (2 * block.radius + 1) * block.tokens
    kv, d = block.kv_heads * block.head_dim, block.dim
    assert len(ew_mat) == len(ew_fused) + 2
    assert [p.act_elements for p in extra] == [2 * window * kv + window * (kv + d)] * 2


def test_dense_blocks_gather_nothing() -> None:
    space = load_space(ROOT / "experiments/snapgenpp-1024.toml")
    block = next(op for op in ops(space.preset("small"), space) if op.kind == "middle_block")
    assert block.attn == "full"
    for kind in ("linear", "conv", "elementwise"):
        assert ([p for p in op_primitives(block, "fused") if p.kind == kind]
                == [p for p in op_primitives(block, "materialized") if p.kind == kind])
    assert op_primitives(block, "fused_dense") == op_primitives(block, "fused")


def test_fused_dense_materializes_only_the_local_branch() -> None:
    space = load_space(ROOT / "experiments/snapgenpp-1024.toml")
    cfg = space.preset("small")
    block = next(op for op in ops(cfg, space) if op.kind == "down_block")
    fused, mat, mixed = (op_primitives(block, lw) for lw in ("fused", "materialized", "fused_dense"))
    attention = [[p for p in prims if p.kind == "attention"] for prims in (fused, mat, mixed)]
    # assa: a global, a local and a cross-attention branch; fused: one primitive each, materialized: three
    assert (len(attention[0]), len(attention[1]), len(attention[2])) == (3, 9, 5)
    assert [p for p in mixed if p.kind == "elementwise"] == [p for p in mat if p.kind == "elementwise"]
    elements = [sum(p.act_elements for p in a) for a in attention]
    assert elements[0] < elements[2] < elements[1]


def test_unknown_lowering_names_the_allowed_values() -> None:
    space = load_space(ROOT / "experiments/shapes-32.toml")
    op = ops(space.smallest(), space)[-2]
    with pytest.raises(ValueError, match="fused.*materialized.*'flash'"):
        op_primitives(op, "flash")  # type: ignore[arg-type]


def test_profile_attention_lowering(tmp_path: Path) -> None:
    text = (ROOT / "device_profiles/iphone16promax.toml").read_text()
    assert load_profile("iphone16promax", profile_dir=ROOT / "device_profiles").attention.value == "materialized"
    (tmp_path / "iphone16promax.toml").write_text(text.replace('attention = "materialized"', 'attention = "flash"'))
    with pytest.raises(ValueError, match=r"runtime\.attention must be one of fused, materialized, fused_dense, got "
                                         r"'flash'"):
        load_profile("iphone16promax", profile_dir=tmp_path)


def test_estimate_positive_and_monotone_in_bandwidth() -> None:
    import dataclasses

    space = load_space(ROOT / "experiments/snapgenpp-1024.toml")
    prof = load_profile("pixel8", profile_dir=ROOT / "device_profiles")
    params = prior_params(prof)
    faster = dataclasses.replace(prof, bandwidth_gbps=dataclasses.replace(prof.bandwidth_gbps, value=1000.0))
    for key in kernels(space.preset("small"), space, precision="fp16"):
        slow, fast = estimate_kernel_ms(key, prof, params), estimate_kernel_ms(key, faster, params)
        assert 0 < fast <= slow


def test_cpu_runtime_with_a_library_gemm_gets_the_measured_peak_for_gemm_kinds() -> None:
    import dataclasses

    host = load_profile("host", profile_dir=ROOT / "device_profiles")
    assert host.runtime == "TVM" and not library_gemm(host)
    tvm = prior_params(host)
    ort = dataclasses.replace(host, runtime="onnxruntime")
    assert library_gemm(ort)
    lib = prior_params(ort)
    for kind in ("linear", "conv"):
        assert lib.kinds[kind].eff_compute == pytest.approx(tvm.kinds[kind].eff_compute / CPU_TVM_GEMM_EFFICIENCY)
        assert "torch.mm" in lib.sources[kind]
    assert lib.kinds["linear"].eff_compute == pytest.approx(1.0)
    assert lib.kinds["attention"] == tvm.kinds["attention"] and lib.kinds["elementwise"] == tvm.kinds["elementwise"]
    # a datasheet peak says nothing about a library's GEMM; NPUs and GPUs keep their priors
    datasheet = dataclasses.replace(ort, peak_gflops={"fp32": dataclasses.replace(host.peak_gflops["fp32"],
                                                                                  source="datasheet: x")})
    assert not library_gemm(datasheet)
    assert not library_gemm(load_profile("iphone16promax", profile_dir=ROOT / "device_profiles"))
