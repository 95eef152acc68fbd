"""What `hwnas devices` shows and writes: the profiles, the tables each has, a new profile's scaffold.

The text is built here, as lines, so that the CLI only prints it and other tools can reuse it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hwnas.io import atomic_write_text
from hwnas.latency.profile import DeviceKind, DeviceProfile, list_profiles, load_profile, scaffold_profile
from hwnas.latency.table import table_kinds


def overview_lines(*, profile_dir: str | Path, table_dir: str | Path) -> list[str]:
    """Two lines per profile: name, kind, default precision, description; then the kind of LUT
    (measured / estimated / mixed / none) it has for every experiment any device has a table for.
    A profile that does not load is listed with its error instead of stopping the listing."""
    names = list_profiles(profile_dir)
    heads: dict[str, str] = {}
    kinds: dict[str, dict[str, str]] = {}
    for name in names:
        profile: DeviceProfile | None
        try:
            profile = load_profile(name, profile_dir=profile_dir)
            heads[name] = f"{name:18s} {profile.kind:4s} {profile.default_precision:6s} {profile.description}"
        except ValueError as exc:
            profile, heads[name] = None, f"{name:18s} invalid profile: {exc}"
        kinds[name] = table_kinds(name, table_dir=table_dir, profile=profile)
    experiments = sorted({e for k in kinds.values() for e in k})
    lines = []
    for name in names:
        luts = ", ".join(f"{e}: {kinds[name].get(e, 'none')}" for e in experiments) or "no latency tables"
        lines += [heads[name], f"{'':18s} LUT {luts}"]
    return lines


def profile_lines(profile: DeviceProfile, *, table_dir: str | Path) -> list[str]:
    """Every field of `profile` with the source of each number, and the tables it has."""
    p = profile
    lines = [
        f"{p.name}: {p.description}  ({p.path})",
        f"kind {p.kind}, {p.threads} threads, default precision {p.default_precision}, local {str(p.local).lower()}",
        f"TVM target  {json.dumps(p.target)}"
        + ('  (mcpu "native": the CPU this runs on, as LLVM names it)' if p.native_cpu else ""),
        f"RPC key     {p.rpc_key or '(local)'}",
        *(f"peak {prec:6s} {fig.value:>9,.1f} GFLOP/s  {fig.source}" for prec, fig in p.peak_gflops.items()),
        f"bandwidth   {p.bandwidth_gbps.value:>9,.1f} GB/s     {p.bandwidth_gbps.source}",
        f"text encoder {p.text_encoder.latency_ms.value:>8,.1f} ms  {p.text_encoder.latency_ms.source}",
        f"VAE decoder {p.vae_decoder.latency_ms.value:>9,.1f} ms  at {p.vae_decoder.resolution} px: "
        f"{p.vae_decoder.latency_ms.source}",
        f"runtime     {p.runtime or '(not stated)'}, attention {p.attention.value}: {p.attention.source}",
        (f"dispatch    {p.dispatch_us.value:>9,.2f} us per primitive  {p.dispatch_us.source}" if p.dispatch_us
         else "dispatch    (not stated: the device kind's assumed overhead; hwnas lut dispatch measures it)"),
    ]
    if p.elementwise_passes is not None:
        passes = p.elementwise_passes
        lines.append(f"element-wise {passes.value:>8g} passes per primitive  {passes.source}")
    if p.half_speedup_mflop is not None:
        half = p.half_speedup_mflop
        lines.append(f"threading   {half.value:>9g} MFLOP per primitive for half the speed-up of {p.threads} "
                     f"threads  {half.source}")
    luts = table_kinds(p.name, table_dir=table_dir, profile=p)
    return [*lines, "LUTs        " + (", ".join(f"{e}: {k}" for e, k in luts.items()) or "none")]


def parse_target(text: str) -> dict[str, Any]:
    """A TVM target from `--target`: a JSON object with a "kind", or a bare kind such as `llvm`."""
    try:
        target = json.loads(text) if text.lstrip().startswith("{") else {"kind": text.strip()}
    except json.JSONDecodeError as exc:
        raise ValueError(f"--target is not valid JSON: {exc}: {text!r}") from None
    if not isinstance(target.get("kind"), str) or not target["kind"]:
        raise ValueError(f"--target needs a 'kind' such as llvm, cuda or metal, got {text!r}")
    return target


def add_profile(name: str, *, target: str, description: str, kind: DeviceKind, profile_dir: str | Path) -> Path:
    """Write `profile_dir/NAME.toml`, every field present with TODO sources; never overwrites."""
    path = Path(profile_dir) / f"{name}.toml"
    text = scaffold_profile(name, target=parse_target(target), description=description, kind=kind)
    if path.exists():
        raise ValueError(f"{path} exists already; edit it or choose another name")
    atomic_write_text(path, text)
    return path
