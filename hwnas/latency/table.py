"""The LUT store: `latency_tables/<device>/<experiment>.csv` plus a JSON provenance sidecar.

CSV: one row per `KernelKey` (`KEY_COLUMNS`), then `median_ms, p10_ms, p90_ms, cv, n, source`
(`source` = measured | estimated per row, so measured entries can replace estimated ones one by
one). Estimated rows have p10 = p90 = median, cv = 0, n = 0.

Sidecar `<experiment>.meta.json`: device, target, TVM version, threads, precisions, date, code
hash (of the files that define the kernels and their cost, so a code change marks the table
stale), measured/estimated, the host CPU for local devices, estimator parameters with their
sources, the calibration, an optional fitted correction, and the CSV's SHA-256.

Both files are written atomically (`hwnas.io`). `load_table` refuses stale tables
with a `StaleTableError` that names the changed field and the command that rebuilds the table.

A table of the local machine built on another CPU is not stale: its timings are still the best
numbers at hand, but they are labelled "measured on <that CPU>, running on <this one>"
(`LatencyTable.cpu_note`) wherever they would otherwise say "measured".
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, cast

import hwnas
from hwnas._keys import check_name
from hwnas.io import atomic_write_text, sha256_bytes
from hwnas.latency.interval import ErrorModel as ErrorModel  # re-exported: latency/estimate.py imports it from here
from hwnas.latency.interval import prior_error as prior_error  # re-exported, as ErrorModel
from hwnas.latency.kernels import KEY_COLUMNS, KernelKey, Precision, key_from_row, key_to_row
from hwnas.latency.profile import (
    DEFAULT_PROFILE_DIR,
    NATIVE_CPU,
    DeviceProfile,
    PipelinePart,
    host_cpu,
    load_profile,
)

Source = Literal["measured", "estimated"]
TableSource = Literal["measured", "estimated", "mixed"]
TIMING_COLUMNS: tuple[str, ...] = ("median_ms", "p10_ms", "p90_ms", "cv", "n", "source")
COLUMNS: tuple[str, ...] = (*KEY_COLUMNS, *TIMING_COLUMNS)
DEFAULT_TABLE_DIR = Path("latency_tables")
FORMAT_VERSION = 1

_PACKAGE_ROOT = Path(hwnas.__file__).resolve().parent
KERNEL_CODE_FILES: tuple[str, ...] = ("cost.py", "latency/kernels.py")
"""Files (relative to the `hwnas` package) that define kernels and their cost: any table."""
ESTIMATE_CODE_FILES: tuple[str, ...] = (*KERNEL_CODE_FILES, "latency/primitives.py", "latency/estimate.py")
"""Files an estimated table depends on. Measured tables add their benchmark code."""


class StaleTableError(ValueError):
    """A LUT was built for another target, TVM version, code or profile; rebuild it."""


class CorruptTableError(ValueError):
    """A LUT file cannot be read or does not match its sidecar."""


class HostMismatchWarning(UserWarning):
    """A table of the local machine was built on a different CPU (model, or LLVM cpu name)."""


@dataclass(frozen=True)
class Timing:
    """One kernel's latency in milliseconds: median, 10th/90th percentile, coefficient of variation, n runs."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    cv: float
    n: int
    source: Source

    def __post_init__(self) -> None:
        for name in ("median_ms", "p10_ms", "p90_ms", "cv"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.median_ms <= 0:
            raise ValueError(f"median_ms must be > 0, got {self.median_ms!r}")
        if not self.p10_ms <= self.median_ms <= self.p90_ms:
            raise ValueError(f"need p10_ms <= median_ms <= p90_ms, got {self.p10_ms!r}, {self.median_ms!r}, "
                             f"{self.p90_ms!r}")
        if not isinstance(self.n, int) or self.n < 0:
            raise ValueError(f"n must be an integer >= 0, got {self.n!r}")
        if self.source not in ("measured", "estimated"):
            raise ValueError(f"source must be 'measured' or 'estimated', got {self.source!r}")
        if self.source == "measured" and self.n < 1:
            raise ValueError(f"a measured timing needs n >= 1, got {self.n!r}")

    @classmethod
    def estimated(cls, latency_ms: float) -> Timing:
        return cls(latency_ms, latency_ms, latency_ms, 0.0, 0, "estimated")


@dataclass(frozen=True)
class Correction:
    """A fitted linear correction of the denoiser step time: corrected = a * step_ms + b_ms."""

    a: float
    b_ms: float
    source: str


@dataclass(frozen=True)
class TableMeta:
    """Provenance of a LUT (the sidecar). `tvm_version` is None for estimated tables."""

    device: str
    experiment: str
    experiment_path: str
    source: TableSource
    target: dict[str, Any] = field(hash=False)
    tvm_version: str | None
    threads: int
    precisions: tuple[Precision, ...]
    date: str
    code_hash: str
    code_files: tuple[str, ...]
    profile_hash: str | None = None
    host_cpu: str | None = None
    host_cores: int | None = None
    estimator: dict[str, Any] | None = field(default=None, hash=False)
    calibration: str = ""
    correction: Correction | None = None
    error: ErrorModel | None = None
    """How far the table's step times are from measured ones (intervals); None: not known (see `error_model`)."""
    calibration_fit: dict[str, Any] | None = field(default=None, hash=False)
    """A calibrated table's measurements, residuals and leave-one-out errors (`hwnas lut calibrate`)."""
    csv_sha256: str = ""
    rows: int = 0
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableMeta:
        data = dict(data)
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"format must be {FORMAT_VERSION}, got {data.get('format')!r}")
        data["precisions"] = tuple(data["precisions"])
        data["code_files"] = tuple(data["code_files"])
        if data.get("correction") is not None:
            data["correction"] = Correction(**data["correction"])
        if data.get("error") is not None:
            data["error"] = ErrorModel.from_dict(data["error"])
        return cls(**data)

    def error_model(self) -> ErrorModel:
        """`error`, or for a table without one: the uncalibrated prior (estimates), the prior's shape
        scatter (measured tables not yet validated: kernel sums vs whole steps)."""
        if self.error is not None:
            return self.error
        prior = prior_error()
        if self.source == "estimated":
            return prior
        from hwnas.latency.interval import PRIOR_DOF, PRIOR_SHAPE_SD

        return ErrorModel("prior", 0.0, PRIOR_SHAPE_SD, PRIOR_DOF, 0,
                          "measured table not validated: assumed scatter of kernel sums around whole steps; "
                          "run hwnas lut validate --write-interval")


@dataclass(frozen=True)
class LatencyTable:
    """A loaded LUT: entries by key, provenance, and the device's non-searched pipeline parts.

    `cpu_note` is "measured on <CPU>, running on <CPU>" when a local device's table was built on
    another CPU than this one (see `cpu_note`), else "".
    """

    meta: TableMeta
    entries: dict[KernelKey, Timing] = field(hash=False)
    text_encoder: PipelinePart = field(hash=False)
    vae_decoder: PipelinePart = field(hash=False)
    cpu_note: str = ""
    _median_ms: dict[KernelKey, tuple[float, Source]] = field(init=False, repr=False, compare=False, hash=False)
    _memo: dict[str, str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Flat lookups for the predictor; `_memo` holds derived strings (provenance per source).
        object.__setattr__(self, "_median_ms", {k: (t.median_ms, t.source) for k, t in self.entries.items()})
        object.__setattr__(self, "_memo", {})

    @property
    def device(self) -> str:
        return self.meta.device

    @property
    def source(self) -> TableSource:
        kinds = {t.source for t in self.entries.values()}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def error_model(self) -> ErrorModel:
        """How far this table's step times are from measured ones (`TableMeta.error_model`)."""
        return self.meta.error_model()

    @property
    def source_label(self) -> str:
        """`source`, with where the measured entries were timed when that was another CPU."""
        return label_source(self.source, self.cpu_note)


def label_source(source: str, cpu_note: str) -> str:
    """"measured", "estimated" or "mixed", or where measured entries came from another CPU: "measured on
    X, running on Y" / "mixed: estimated and measured on X, running on Y". Estimates are never relabelled."""
    if not cpu_note or source == "estimated":
        return source
    return cpu_note if source == "measured" else f"{source}: estimated and {cpu_note}"


# Code hash, paths ---------------------------------------------------------------------------


def code_hash(files: tuple[str, ...] = KERNEL_CODE_FILES) -> str:
    """SHA-256 (first 16 hex digits) over the named package files' names and contents."""
    return sha256_bytes(b"".join(rel.encode() + b"\0" + (_PACKAGE_ROOT / rel).read_bytes() + b"\0"
                                 for rel in files))[:16]


def profile_hash(profile: DeviceProfile) -> str:
    """Hash of the profile numbers an estimated table rests on (peaks, bandwidth, target, threads,
    attention lowering, dispatch overhead, element-wise passes and thread scaling where stated).

    The target is the declared one: an mcpu of "native" stays "native", whichever CPU runs.
    """
    data = {"target": profile.declared_target, "threads": profile.threads, "kind": profile.kind,
            "attention": profile.attention.value,
            "bandwidth": asdict(profile.bandwidth_gbps),
            "peaks": {p: asdict(f) for p, f in sorted(profile.peak_gflops.items())}}
    if profile.dispatch_us is not None:  # absent from older profiles: their hashes stay as they were
        data["dispatch_us"] = asdict(profile.dispatch_us)
    if profile.elementwise_passes is not None:
        data["elementwise_passes"] = asdict(profile.elementwise_passes)
    if profile.half_speedup_mflop is not None:
        data["half_speedup_mflop"] = asdict(profile.half_speedup_mflop)
    return sha256_bytes(json.dumps(data, sort_keys=True).encode())[:16]


def tvm_version() -> str | None:
    """Installed apache-tvm version, without importing tvm; None where it is not installed."""
    try:
        return metadata.version("apache-tvm")
    except metadata.PackageNotFoundError:
        return None


def table_paths(device: str, experiment: str, *, table_dir: str | Path = DEFAULT_TABLE_DIR) -> tuple[Path, Path]:
    """(CSV path, sidecar path) of a table; `device` and `experiment` must be plain names (`check_name`)."""
    check_name(device, what="device name")
    check_name(experiment, what="experiment name")
    base = Path(table_dir) / device
    return base / f"{experiment}.csv", base / f"{experiment}.meta.json"


def rebuild_command(meta: TableMeta) -> str:
    if meta.calibration_fit:
        return (f"hwnas lut calibrate --device {meta.device} --experiment {meta.experiment_path} --measurements "
                f"{meta.calibration_fit['file']}")
    cmd = f"hwnas lut build --device {meta.device} --experiment {meta.experiment_path}"
    if meta.source == "estimated":
        return cmd + " --estimate"
    return cmd if meta.host_cpu is not None else cmd + " --tracker HOST:PORT --key KEY"  # local: no tracker


# Writing ------------------------------------------------------------------------------------


def _format_float(value: float) -> str:
    return f"{value:.6g}"


def _csv_text(entries: dict[KernelKey, Timing]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for key, t in entries.items():
        row = key_to_row(key)
        row.update(median_ms=_format_float(t.median_ms), p10_ms=_format_float(t.p10_ms),
                   p90_ms=_format_float(t.p90_ms), cv=_format_float(t.cv), n=str(t.n), source=t.source)
        writer.writerow(row)
    return buf.getvalue()


def write_table(table: LatencyTable, *, table_dir: str | Path = DEFAULT_TABLE_DIR) -> tuple[Path, Path]:
    """Write CSV and sidecar atomically; the sidecar records the CSV's SHA-256 and row count.

    The CSV is written first; a crash between the two leaves a sidecar whose hash does not match,
    which `load_table` reports as corrupt rather than reading a mixed table.
    """
    csv_path, meta_path = table_paths(table.meta.device, table.meta.experiment, table_dir=table_dir)
    text = _csv_text(table.entries)
    meta = table.meta.to_dict()
    meta.update(csv_sha256=sha256_bytes(text.encode()), rows=len(table.entries))
    meta_text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    atomic_write_text(csv_path, text)
    atomic_write_text(meta_path, meta_text)
    return csv_path, meta_path


# Reading ------------------------------------------------------------------------------------


def read_table(csv_path: str | Path, meta_path: str | Path, *, text_encoder: PipelinePart,
               vae_decoder: PipelinePart) -> LatencyTable:
    """Read a CSV + sidecar pair without staleness checks. Errors name the file (and row)."""
    csv_path, meta_path = Path(csv_path), Path(meta_path)
    try:
        meta = TableMeta.from_dict(json.loads(meta_path.read_text()))
    except FileNotFoundError:
        raise CorruptTableError(f"{meta_path}: sidecar missing") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptTableError(f"{meta_path}: unreadable sidecar: {exc}") from None
    try:
        raw = csv_path.read_bytes()
    except FileNotFoundError:
        raise CorruptTableError(f"{csv_path}: table missing (sidecar {meta_path.name} exists)") from None
    if sha256_bytes(raw) != meta.csv_sha256:
        raise CorruptTableError(f"{csv_path}: contents do not match the SHA-256 in {meta_path.name} "
                                f"(truncated, edited by hand or partly written); rebuild with: "
                                f"{rebuild_command(meta)}")
    entries: dict[KernelKey, Timing] = {}
    try:
        reader = csv.DictReader(io.StringIO(raw.decode()))
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"columns must be {list(COLUMNS)}, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                key = key_from_row(row)
                timing = Timing(float(row["median_ms"]), float(row["p10_ms"]), float(row["p90_ms"]),
                                float(row["cv"]), int(row["n"]), cast(Source, row["source"]))  # Timing checks it
            except (TypeError, ValueError) as exc:
                raise ValueError(f"line {line}: {exc}") from None
            if key in entries:
                raise ValueError(f"line {line}: duplicate key {key.describe()}")
            entries[key] = timing
    except (UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise CorruptTableError(f"{csv_path}: {exc}") from None
    return LatencyTable(meta, entries, text_encoder, vae_decoder)


def check_fresh(meta: TableMeta, profile: DeviceProfile, *, current_code_hash: str,
                current_tvm_version: str | None, current_host: tuple[str, int] | None) -> None:
    """Raise StaleTableError naming the first changed field and the rebuild command.

    Checked: target, threads, TVM version (measured tables, where TVM is installed), code hash,
    profile numbers (estimated tables). Where the profile's mcpu is "native" the target's mcpu is
    not compared: a local device's timings taken on another CPU give a `HostMismatchWarning` and
    are labelled (`cpu_note`), not refused; they remain a guide to this machine.
    """
    def stale(what: str, old: Any, new: Any) -> StaleTableError:
        return StaleTableError(
            f"latency table {meta.device}/{meta.experiment} is stale: {what} changed "
            f"(table: {old!r}, now: {new!r}); rebuild with: {rebuild_command(meta)}")

    if _without_native_cpu(meta.target, profile) != _without_native_cpu(profile.target, profile):
        raise stale("target", meta.target, profile.target)
    if meta.threads != profile.threads:
        raise stale("threads", meta.threads, profile.threads)
    if meta.tvm_version is not None and current_tvm_version is not None and meta.tvm_version != current_tvm_version:
        raise stale("TVM version", meta.tvm_version, current_tvm_version)
    if meta.code_hash != current_code_hash:
        raise stale(f"code hash of {', '.join(meta.code_files)}", meta.code_hash, current_code_hash)
    if meta.source == "estimated" and meta.profile_hash != profile_hash(profile):
        raise stale(f"device profile numbers ({profile.path or profile.name})", meta.profile_hash,
                    profile_hash(profile))
    note = cpu_note(meta, profile, current_host=current_host[0] if current_host is not None else None)
    if note:
        warnings.warn(HostMismatchWarning(
            f"latency table {meta.device}/{meta.experiment} was {note}; rebuild with: {rebuild_command(meta)}"),
            stacklevel=3)


def _without_native_cpu(target: dict[str, Any], profile: DeviceProfile) -> dict[str, Any]:
    """`target` less its mcpu where `profile` follows the running CPU (mcpu = "native")."""
    return {k: v for k, v in target.items() if k != "mcpu"} if profile.native_cpu else target


def cpu_note(meta: TableMeta, profile: DeviceProfile, *, current_host: str | None) -> str:
    """"measured on <CPU>, running on <CPU>" when a local device's timings were taken on another CPU, else "".

    A CPU is its model string (`host_cpu`) and, where both sides know it, LLVM's name for it (the
    table's target mcpu against the profile's, resolved from "native"). Tables of remote devices
    record no CPU, and estimated tables time nothing: both get "".
    """
    if not profile.local or meta.source == "estimated" or meta.host_cpu is None or current_host is None:
        return ""
    built, running = meta.target.get("mcpu"), profile.target.get("mcpu")
    names_known = NATIVE_CPU not in (built, running) and None not in (built, running)
    if meta.host_cpu == current_host and not (names_known and built != running):
        return ""
    return f"measured on {_cpu_text(built, meta.host_cpu)}, running on {_cpu_text(running, current_host)}"


def _cpu_text(mcpu: Any, model: str) -> str:
    """"znver4 (AMD EPYC, family 25, model 17)" from an LLVM cpu name and a `host_cpu` model string."""
    if not isinstance(mcpu, str) or mcpu == NATIVE_CPU:
        return model
    name, sep, rest = model.partition(" (")
    return f"{mcpu} ({name}, {rest[:-1]})" if sep and rest.endswith(")") else f"{mcpu} ({model})"


def load_table(device: str | DeviceProfile, experiment: str, *, table_dir: str | Path = DEFAULT_TABLE_DIR,
               profile_dir: str | Path = DEFAULT_PROFILE_DIR) -> LatencyTable:
    """Load `table_dir/<device>/<experiment>.csv` after checking it is fresh (see `check_fresh`).

    `experiment` is the experiment's name (`SearchSpace.name`). The pipeline parts (text encoder,
    VAE decoder) come from the device profile as it is now.
    """
    profile = device if isinstance(device, DeviceProfile) else load_profile(device, profile_dir=profile_dir)
    csv_path, meta_path = table_paths(profile.name, experiment, table_dir=table_dir)
    if not csv_path.exists() and not meta_path.exists():
        raise FileNotFoundError(
            f"no latency table for device {profile.name!r} and experiment {experiment!r} ({csv_path}); build one "
            f"with: hwnas lut build --device {profile.name} --experiment <experiment.toml> --estimate")
    table = read_table(csv_path, meta_path, text_encoder=profile.text_encoder, vae_decoder=profile.vae_decoder)
    if table.meta.device != profile.name or table.meta.experiment != experiment:
        raise CorruptTableError(f"{meta_path}: describes {table.meta.device}/{table.meta.experiment}, "
                                f"expected {profile.name}/{experiment}")
    current_host = host_cpu() if profile.local else None
    check_fresh(table.meta, profile, current_code_hash=code_hash(table.meta.code_files),
                current_tvm_version=tvm_version(), current_host=current_host)
    note = cpu_note(table.meta, profile, current_host=current_host[0] if current_host is not None else None)
    return dataclasses.replace(table, cpu_note=note) if note else table


def table_kinds(device: str, *, table_dir: str | Path = DEFAULT_TABLE_DIR,
                profile: DeviceProfile | None = None) -> dict[str, str]:
    """{experiment name: measured/estimated/mixed} of the tables a device has (sidecars only).

    Given the device's `profile`, a local table built on another CPU reads "measured on X, running
    on Y" (`label_source`); an unreadable sidecar reads "corrupt".
    """
    out: dict[str, str] = {}
    current = host_cpu()[0] if profile is not None and profile.local else None
    for meta_path in sorted((Path(table_dir) / device).glob("*.meta.json")):
        name = meta_path.name.removesuffix(".meta.json")
        try:
            meta = TableMeta.from_dict(json.loads(meta_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            out[name] = "corrupt"
            continue
        note = cpu_note(meta, profile, current_host=current) if profile is not None else ""
        out[name] = label_source(meta.source, note)
    return out
