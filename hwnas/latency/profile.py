"""Device profiles: what a target device is, how TVM reaches it, and its published or measured peaks.

One TOML file per device in `device_profiles/` (see `device_profiles/host.toml` for every field; the
optional `[ram]`, `[runtime.dispatch]` and `[runtime.threading]` tables are described in the file
`hwnas devices add` writes).
Every number carries a `source` string that starts with how it is known:

- `datasheet:` a vendor figure; `paper:` a published measurement; `measured:` measured here
  (say the command); `derived:` computed from such figures (say how); `assumed:` a guess (say why);
- `TODO:` not known yet (scaffolded by `hwnas devices add`). A TODO figure loads, but anything
  that needs it (an estimated LUT, a pipeline part in a prediction) refuses to use it.

The machine hwnas runs on changes CPU from one run to the next (an AMD Zen 4 with AVX-512, an
Intel Rocket Lake), and code compiled for one dies with "Illegal instruction" on the other. So a
local profile says `mcpu = "native"`, and loading it puts LLVM's name for the running CPU there.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from hwnas._keys import check_keys, check_name
from hwnas.latency.kernels import PRECISIONS, Precision
from hwnas.latency.primitives import ATTENTION_LOWERINGS, AttentionLowering

DeviceKind = Literal["cpu", "gpu", "npu"]
DEVICE_KINDS: tuple[DeviceKind, ...] = get_args(DeviceKind)
SOURCE_KINDS: tuple[str, ...] = ("datasheet", "paper", "measured", "derived", "assumed", "TODO")
DEFAULT_PROFILE_DIR = Path("device_profiles")
NATIVE_CPU = "native"
"""`tvm.target.mcpu` of a local profile: the CPU hwnas runs on, replaced at load time by `host_llvm_cpu()`."""


@dataclass(frozen=True)
class Figure:
    """A number with the source it rests on (see the module docstring for the source prefixes)."""

    value: float
    source: str

    @property
    def known(self) -> bool:
        return not self.source.startswith("TODO")

    def require(self, what: str) -> float:
        """The value, or a ValueError naming `what` when it is still TODO."""
        if not self.known:
            raise ValueError(f"{what} is not known yet ({self.source!r}); fill it in the device profile")
        return self.value


@dataclass(frozen=True)
class PipelinePart:
    """Latency of a part of the text-to-image pipeline that is not searched (per image)."""

    latency_ms: Figure
    resolution: int = 0
    """Image side in pixels the latency was taken at (VAE decoder); 0 where it does not apply."""


@dataclass(frozen=True)
class Lowering:
    """How the device's runtime lowers attention (`hwnas.latency.primitives`), with its source."""

    value: AttentionLowering
    source: str


DEFAULT_LOWERING = Lowering("fused", "assumed: the profile has no [runtime] table; fused (flash/SDPA-like)")


@dataclass(frozen=True)
class DeviceProfile:
    """A target device. `target` is a TVM 0.27 target dict; `rpc_key` empty means run locally.

    `peak_gflops` maps each precision the device runs to its peak compute (GFLOP/s, a multiply-add
    = 2 FLOPs); weight-only precisions (w8a16, w4a16) compute at 16-bit, so their peak is the fp16
    one unless the profile says otherwise. `bandwidth_gbps` is DRAM bandwidth in GB/s (1e9 B/s).
    `local` marks the machine hwnas itself runs on: its tables record the CPU model.
    `native_cpu` marks a profile whose file says `mcpu = "native"`: `target["mcpu"]` then holds the
    running CPU's LLVM name (see `host_llvm_cpu`), or stays "native" where TVM is not installed.
    """

    name: str
    description: str
    kind: DeviceKind
    local: bool
    threads: int
    default_precision: Precision
    target: dict[str, Any] = field(hash=False)
    rpc_key: str = ""
    peak_gflops: dict[Precision, Figure] = field(default_factory=dict, hash=False)
    bandwidth_gbps: Figure = Figure(0.0, "TODO")
    text_encoder: PipelinePart = PipelinePart(Figure(0.0, "TODO"))
    vae_decoder: PipelinePart = PipelinePart(Figure(0.0, "TODO"))
    attention: Lowering = DEFAULT_LOWERING
    runtime: str = ""
    """The runtime the device's figures and calibration come from (e.g. "Core ML"); "" where unstated."""
    dispatch_us: Figure | None = None
    """The runtime's fixed cost per dispatched primitive in microseconds (`[runtime.dispatch]`), the
    prior of every op kind's overhead; None: the device kind's assumed one (`hwnas.latency.estimate`)."""
    elementwise_passes: Figure | None = None
    """Passes over memory the runtime makes per element-wise primitive (`[runtime.dispatch]`; >= 1): 1 for
    a runtime that fuses each chain (the cost model's count), more where every framework op is its own
    pass (PyTorch eager); None: 1."""
    half_speedup_mflop: Figure | None = None
    """The FLOPs (in millions) of one primitive at which the runtime's extra threads give half their
    speed-up (`[runtime.threading]`): a primitive of f FLOPs runs `1 + (threads - 1) f / (f + h)` times
    faster than on one thread, not `threads` times (`hwnas.latency.estimate.thread_speedup`); None:
    every primitive gets the full speed-up the peak assumes."""
    ram_gib: Figure | None = None
    """Installed DRAM in GiB (2**30 bytes), where the profile gives it (`[ram]`): a sanity bound on memory."""
    path: Path | None = field(default=None, compare=False)
    native_cpu: bool = False

    @property
    def declared_target(self) -> dict[str, Any]:
        """The target as the profile file states it (`mcpu = "native"` kept), independent of the CPU."""
        return {**self.target, "mcpu": NATIVE_CPU} if self.native_cpu else self.target

    @property
    def precisions(self) -> tuple[Precision, ...]:
        """Precisions this device runs, in `PRECISIONS` order."""
        return tuple(p for p in PRECISIONS if p in self.peak_gflops)


# Loading -------------------------------------------------------------------------------------


def list_profiles(profile_dir: str | Path = DEFAULT_PROFILE_DIR) -> list[str]:
    """Names of the profiles in `profile_dir` (file stems), sorted."""
    return sorted(p.stem for p in Path(profile_dir).glob("*.toml"))


def load_profile(name_or_path: str | Path, *, profile_dir: str | Path = DEFAULT_PROFILE_DIR) -> DeviceProfile:
    """Load `profile_dir/<name>.toml`, or a path to a `.toml` file.

    Unknown names raise ValueError listing the known ones; a malformed file raises ValueError
    naming the file, the field and what was expected.
    """
    text = str(name_or_path)
    path = Path(text) if text.endswith(".toml") or os.sep in text else Path(profile_dir) / f"{text}.toml"
    if not path.is_file():
        known = list_profiles(profile_dir)
        raise ValueError(f"unknown device {text!r}; known devices: {', '.join(known) or '(none)'} "
                         f"(profiles in {profile_dir}/)")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    try:
        return _profile_from_dict(raw, path=path)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


_T = TypeVar("_T")


def _get(table: dict[str, Any], key: str, kind: type[_T] | tuple[type[_T], ...], where: str, expected: str) -> _T:
    if key not in table:
        raise ValueError(f"missing field {where}{key} (expected {expected})")
    value = table[key]
    if isinstance(value, bool) and kind is not bool:
        raise ValueError(f"field {where}{key} must be {expected}, got {value!r}")
    if not isinstance(value, kind):
        raise ValueError(f"field {where}{key} must be {expected}, got {value!r}")
    return value


def _section(raw: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"missing table [{where}{key}]")
    return value


def _source(table: dict[str, Any], where: str) -> str:
    src = _get(table, "source", str, where, "a string starting with one of " + "/".join(SOURCE_KINDS))
    head = src.split(":", 1)[0].strip()
    if head not in SOURCE_KINDS or ":" not in src or not src.split(":", 1)[1].strip():
        raise ValueError(f"field {where}source must start with one of {', '.join(SOURCE_KINDS)} followed by "
                         f"': how it is known', got {src!r}")
    return src


def _figure(table: dict[str, Any], key: str, where: str, *, unit: str) -> Figure:
    src = _source(table, where)
    value = _get(table, key, (int, float), where, f"a number in {unit}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not src.startswith("TODO")):
        raise ValueError(f"field {where}{key} must be a positive number in {unit}, got {value!r}")
    return Figure(float(value), src)


def _pipeline_part(raw: dict[str, Any], key: str) -> PipelinePart:
    where = f"pipeline.{key}."
    part = _section(_section(raw, "pipeline"), key, "pipeline.")
    check_keys(part, _KEYS[f"pipeline.{key}"], where=f"pipeline.{key}")
    src = _source(part, where)
    value = _get(part, "latency_ms", (int, float), where, "a number of milliseconds >= 0")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"field {where}latency_ms must be a number of milliseconds >= 0, got {value!r}")
    resolution = 0
    if key == "vae_decoder":
        resolution = _get(part, "resolution", int, where, "the image side in pixels (an integer > 0)")
        if resolution <= 0:
            raise ValueError(f"field {where}resolution must be an integer > 0, got {resolution!r}")
    return PipelinePart(Figure(float(value), src), resolution)


_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"device", "tvm", "peak", "memory", "ram", "pipeline", "runtime"}),
    "ram": frozenset({"gib", "source"}),
    "runtime": frozenset({"name", "attention", "source", "dispatch", "threading"}),
    "runtime.dispatch": frozenset({"overhead_us", "elementwise_passes", "source"}),
    "runtime.threading": frozenset({"half_speedup_mflop", "source"}),
    "device": frozenset({"name", "description", "kind", "local", "threads", "default_precision"}),
    "tvm": frozenset({"target", "rpc_key"}),  # the target table itself is TVM's to check
    "peak.*": frozenset({"gflops", "source"}),
    "memory": frozenset({"bandwidth_gbps", "source"}),
    "pipeline": frozenset({"text_encoder", "vae_decoder"}),
    "pipeline.text_encoder": frozenset({"latency_ms", "source"}),
    "pipeline.vae_decoder": frozenset({"latency_ms", "resolution", "source"}),
}
"""Keys each profile table may have; an unknown one is an error naming the nearest (`check_keys`)."""


def _profile_from_dict(raw: dict[str, Any], *, path: Path) -> DeviceProfile:
    for where in ("", "device", "tvm", "memory", "ram", "pipeline", "runtime"):
        table = raw.get(where) if where else raw
        if isinstance(table, dict):
            check_keys(table, _KEYS[where], where=where)
    dev = _section(raw, "device")
    name = check_name(_get(dev, "name", str, "device.", "a string"), what="field device.name")
    if name != path.stem:
        raise ValueError(f"field device.name must equal the file name {path.stem!r}, got {name!r}")
    kind = _get(dev, "kind", str, "device.", f"one of {DEVICE_KINDS}")
    if kind not in DEVICE_KINDS:
        raise ValueError(f"field device.kind must be one of {DEVICE_KINDS}, got {kind!r}")
    threads = _get(dev, "threads", int, "device.", "a positive integer")
    if threads < 1:
        raise ValueError(f"field device.threads must be a positive integer, got {threads!r}")
    precision = _get(dev, "default_precision", str, "device.", f"one of {PRECISIONS}")
    if precision not in PRECISIONS:
        raise ValueError(f"field device.default_precision must be one of {PRECISIONS}, got {precision!r}")

    tvm = _section(raw, "tvm")
    target = _get(tvm, "target", dict, "tvm.", 'a TVM target table, e.g. {kind = "llvm", mcpu = "..."}')
    if not isinstance(target.get("kind"), str):
        raise ValueError(f"field tvm.target.kind must be a string such as 'llvm', got {target.get('kind')!r}")
    rpc_key = _get(tvm, "rpc_key", str, "tvm.", 'a string ("" to run locally)')
    local = _get(dev, "local", bool, "device.", "true or false")
    native_cpu = target.get("mcpu") == NATIVE_CPU
    if native_cpu:
        if not local or target["kind"] != "llvm":
            raise ValueError(f'field tvm.target.mcpu = "{NATIVE_CPU}" means the CPU hwnas runs on: it needs '
                             f'kind = "llvm" and device.local = true, got kind {target["kind"]!r}, local {local}')
        detected = host_llvm_cpu()
        if detected is not None:
            target = {**target, "mcpu": detected}

    peaks: dict[Precision, Figure] = {}
    for prec, table in _section(raw, "peak").items():
        if prec not in PRECISIONS:
            raise ValueError(f"table [peak.{prec}] names an unknown precision; expected one of {PRECISIONS}")
        if not isinstance(table, dict):
            raise ValueError(f"[peak.{prec}] must be a table with gflops and source, got {table!r}")
        check_keys(table, _KEYS["peak.*"], where=f"peak.{prec}")
        peaks[prec] = _figure(table, "gflops", f"peak.{prec}.", unit="GFLOP/s")
    if precision not in peaks:
        raise ValueError(f"field device.default_precision {precision!r} has no [peak.{precision}] table; "
                         f"peaks given for {sorted(peaks)}")
    memory = _section(raw, "memory")
    attention, runtime, dispatch_us, passes, half_speedup = DEFAULT_LOWERING, "", None, None, None
    if "runtime" in raw:
        rt = _section(raw, "runtime")
        runtime = _get(rt, "name", str, "runtime.", 'the runtime\'s name, e.g. "Core ML"')
        lowering = _get(rt, "attention", str, "runtime.", f"one of {', '.join(ATTENTION_LOWERINGS)}")
        if lowering not in ATTENTION_LOWERINGS:
            raise ValueError(f"field runtime.attention must be one of {', '.join(ATTENTION_LOWERINGS)}, "
                             f"got {lowering!r}")
        attention = Lowering(lowering, _source(rt, "runtime."))
        if "dispatch" in rt:
            dispatch = _section(rt, "dispatch", "runtime.")
            check_keys(dispatch, _KEYS["runtime.dispatch"], where="runtime.dispatch")
            dispatch_us = _figure(dispatch, "overhead_us", "runtime.dispatch.", unit="microseconds")
            if "elementwise_passes" in dispatch:
                passes = _figure(dispatch, "elementwise_passes", "runtime.dispatch.", unit="passes")
                if passes.value < 1:
                    raise ValueError("field runtime.dispatch.elementwise_passes must be >= 1 (1: a runtime that "
                                     f"fuses each element-wise chain), got {passes.value!r}")
        if "threading" in rt:
            threading = _section(rt, "threading", "runtime.")
            check_keys(threading, _KEYS["runtime.threading"], where="runtime.threading")
            half_speedup = _figure(threading, "half_speedup_mflop", "runtime.threading.", unit="MFLOP")
            if not half_speedup.value > 0:
                raise ValueError("field runtime.threading.half_speedup_mflop must be > 0, got "
                                 f"{half_speedup.value!r}")
    ram = _figure(_section(raw, "ram"), "gib", "ram.", unit="GiB") if "ram" in raw else None
    return DeviceProfile(
        name=name,
        description=_get(dev, "description", str, "device.", "a string"),
        kind=kind,
        local=local,
        threads=threads,
        default_precision=precision,
        target=target,
        rpc_key=rpc_key,
        peak_gflops=peaks,
        bandwidth_gbps=_figure(memory, "bandwidth_gbps", "memory.", unit="GB/s"),
        text_encoder=_pipeline_part(raw, "text_encoder"),
        vae_decoder=_pipeline_part(raw, "vae_decoder"),
        attention=attention,
        runtime=runtime,
        dispatch_us=dispatch_us,
        elementwise_passes=passes,
        half_speedup_mflop=half_speedup,
        ram_gib=ram,
        path=path,
        native_cpu=native_cpu,
    )


# The machine hwnas runs on ------------------------------------------------------------------


def host_cpu() -> tuple[str, int]:
    """(CPU model, logical core count) of this machine, from /proc/cpuinfo where there is one.

    The model string includes family/model numbers because hypervisors often mask the name.
    """
    name, family, model = "", "", ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and not name:
                    name = value
                elif key == "cpu family" and not family:
                    family = value
                elif key == "model" and not model:
                    model = value
    except OSError:
        import platform

        name = platform.processor() or platform.machine()
    label = name or "unknown"
    if family:
        label += f" (family {family}, model {model})"
    return label, os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def host_llvm_cpu() -> str | None:
    """LLVM's name for the CPU this process runs on (e.g. "znver4", "rocketlake"); None without TVM.

    Asked through TVM's LLVM (`tvm.target.codegen.llvm_get_system_cpu`), so it names a CPU that
    TVM's code generator knows. Importing TVM takes seconds; the answer is cached.
    """
    try:
        from tvm.target import codegen
    except ImportError:
        return None
    return str(codegen.llvm_get_system_cpu())


# Scaffolding -------------------------------------------------------------------------------


def scaffold_profile(name: str, *, target: dict[str, Any], description: str = "",
                     kind: DeviceKind = "cpu") -> str:
    """TOML text of a new profile with every field; numbers are 0 with TODO sources."""
    check_name(name, what="a device name")
    if kind not in DEVICE_KINDS:
        raise ValueError(f"kind must be one of {DEVICE_KINDS}, got {kind!r}")
    target_toml = ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in target.items())
    peaks = "\n".join(
        f"[peak.{p}]\ngflops = 0.0\nsource = \"TODO: datasheet/paper/measured/derived/assumed: how\"\n"
        for p in ("fp32", "fp16", "w8a16", "w4a16"))
    return f'''# Device profile (see device_profiles/host.toml for a complete example).
# Sources start with datasheet:/paper:/measured:/derived:/assumed: and say how.
# TODO figures load, but an estimated LUT or a prediction that needs them refuses to run.

[device]
name = "{name}"
description = {_toml_value(description or "TODO: what this device is")}
kind = "{kind}"          # cpu | gpu | npu: the unit the TVM target runs on
local = false            # true only for the machine hwnas runs on
threads = 1              # TODO: worker threads TVM uses on the device
default_precision = "fp16"

[tvm]
target = {{ {target_toml} }}
rpc_key = "{name}"       # key the device's rpc_server registers at the tracker ("" = local)

# Peak compute per precision in GFLOP/s (a multiply-add = 2 FLOPs); delete precisions it lacks.
{peaks}
[memory]
bandwidth_gbps = 0.0
source = "TODO: DRAM bandwidth in GB/s and where it comes from"

[runtime]
name = "TODO: the runtime you time the model with (Core ML, LiteRT, QNN, ExecuTorch, TVM)"
# fused (flash/SDPA-like) | materialized (scores written and read, e.g. Core ML split-einsum)
# | fused_dense (PyTorch eager: dense attention fused, local windows gathered and materialized)
attention = "fused"
source = "TODO: how you know the runtime's attention lowering"
# An optional [runtime.dispatch] table (overhead_us = 25.0, source = "measured: ...") gives the runtime's fixed
# cost per dispatched primitive, e.g. the smallest sub-DiT of experiments/shapes-32.toml timed on the device,
# less its roofline time, over its primitives (benchmarks/transfer.py does this for the runtimes it times),
# and optionally elementwise_passes: passes over memory per element-wise primitive (1 where the runtime fuses).
# An optional [runtime.threading] table (half_speedup_mflop = 40.0, source = "measured: ...") says how a runtime
# on several threads speeds up small primitives: one of that many MFLOP gets half of the extra threads'
# speed-up (benchmarks/transfer.py measures it from a GEMM ladder timed at one thread and at `threads`).

[pipeline.text_encoder]
latency_ms = 0.0
source = "TODO: measured or published text-encoder latency (SnapGen++ does not time it)"

[pipeline.vae_decoder]
latency_ms = 0.0
resolution = 1024
source = "TODO: measured or published VAE-decoder latency at this resolution"
'''


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + " }"
    raise ValueError(f"cannot write {value!r} to TOML")
