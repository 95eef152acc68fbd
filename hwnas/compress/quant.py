"""Weight-only int4 quantization of a static sub-DiT: packed storage, dequantized quality.

Two methods, both per weight in its matmul form `(N out, K in)`: every `nn.Linear`, and every
conv whose kernel equals its stride (patchify, 2x down/upsample, ASSA's KV compression: a matmul
over non-overlapping patches; see `matmul_weight` for the K and N orders):

- **rtn**: group-wise round-to-nearest along K (groups of `group` input channels), symmetric or
  asymmetric, in the exact layout of onnxruntime's `MatMulNBits` (com.microsoft): unsigned codes
  `q`, dequantized as `(q - zp) * scale`; symmetric groups have the implicit zero point 2^(bits-1)
  and `scale = w_absmax_signed / -2^(bits-1)` (what onnxruntime's own quantizer does, so the
  largest-magnitude weight is exact). K is padded with zero-codes to whole blocks, and the padding
  is counted in the bytes.
- **kmeans**: palettization (SnapGen++ section 5; Core ML's `OpPalettizerConfig(mode="kmeans")`):
  one 2^bits-entry fp16 palette per `group` output rows (per tensor when `group` is None), codes
  are palette indices; 1-D Lloyd k-means from quantile initialisation.
- **fit**: per layer, rtn where K splits into MatMulNBits blocks of at least `FIT_MIN_BLOCK`
  without padding (at most 0.31 bit of scale and zero point per weight), else k-means with just
  enough rows per palette that the palette costs at most `FIT_PALETTE_BITS` per weight. Narrow
  proxy widths (24 or 40 input channels) pad every rtn block by a third or a fifth; palettes need
  no blocks (`fit_spec`).

Mixed precision (SnapGen++): each layer's sensitivity is the MSE of the model output with that
layer alone quantized to 4 bits; the most sensitive layers (per extra bit) go to 8 bits until the
average bits rise by `mixed_extra_bits`. Everything else (the side parameters: biases, norms,
adaLN tables, any other conv) is stored as fp16, or with `side_bits=8` as uint8 codes on an even
grid from each tensor's minimum to its maximum (`round_side`; fp32 minimum and step, 8 bytes a
tensor, so tensors of 8 values or fewer stay fp16), and counted so in `avg_bits_all` and `bytes`.

PyTorch quality uses the dequantized weights from the packed codes (`dequantized_copy`), which
are the weights the int4 ONNX model (`hwnas.compress.onnx_int4`) runs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeAlias, TypeGuard, TypeVar

import numpy as np
import torch
from torch import nn

from hwnas.compress.settings import Bits, QuantSpec, SideBits

WeightLayer: TypeAlias = nn.Linear | nn.Conv2d | nn.ConvTranspose2d
"""What `weight_layers` picks (a conv only with its kernel equal to its stride)."""
_M = TypeVar("_M", bound=nn.Module)


@dataclass
class PackedWeight:
    """A quantized `(N, K)` weight in its storage format.

    rtn: `codes` uint8 `(N, blocks, block * bits / 8)` (MatMulNBits `B`, low nibble first),
    `scales` fp16 `(N, blocks)`, `zero_points` uint8 `(N, blocks)` unpacked (None if symmetric).
    kmeans: `codes` uint8 `(N * K * bits / 8,)` packed indices, `palette` fp16 `(palettes, 2^bits)`.
    """

    spec: QuantSpec
    shape: tuple[int, int]
    block: int
    codes: np.ndarray
    scales: np.ndarray | None = None
    zero_points: np.ndarray | None = None
    palette: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        """Storage bytes: codes + fp16 scales + 4/8-bit zero points + fp16 palettes."""
        total = self.codes.nbytes
        if self.scales is not None:
            total += self.scales.size * 2
        if self.zero_points is not None:
            total += math.ceil(self.zero_points.size * self.spec.bits / 8)
        if self.palette is not None:
            total += self.palette.size * 2
        return total

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.shape[0] * self.shape[1])

    def unpacked_codes(self) -> np.ndarray:
        """Integer codes `(N, K_padded)` (rtn) or `(N, K)` (kmeans)."""
        n, k = self.shape
        if self.spec.method == "rtn":
            q = unpack(self.codes.reshape(n, -1), self.spec.bits)  # (N, blocks * block)
            return q
        return unpack(self.codes, self.spec.bits)[: n * k].reshape(n, k)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight `(N, K)` these codes stand for."""
        n, k = self.shape
        q = self.unpacked_codes().astype(np.float32)
        if self.spec.method == "rtn":
            blocks = q.shape[1] // self.block
            q = q.reshape(n, blocks, self.block)
            zp = (self.zero_points.astype(np.float32) if self.zero_points is not None
                  else np.full((n, blocks), 2 ** (self.spec.bits - 1), np.float32))
            assert self.scales is not None  # rtn always stores scales
            w = (q - zp[..., None]) * self.scales.astype(np.float32)[..., None]  # (N, blocks, block)
            return torch.from_numpy(w.reshape(n, -1)[:, :k].copy())
        rows_per = n if self.spec.group is None else self.spec.group
        assert self.palette is not None  # kmeans always stores a palette
        pal = self.palette.astype(np.float32)[np.arange(n) // rows_per]  # (N, levels)
        return torch.from_numpy(np.take_along_axis(pal, q.astype(np.int64), axis=1))


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned codes (last axis even for 4 bits) into bytes, low nibble first."""
    codes = codes.astype(np.uint8)
    if bits == 8:
        return codes
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.uint8)], axis=-1)
    return (codes[..., 0::2] & 0xF) | ((codes[..., 1::2] & 0xF) << 4)


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of `pack` (4-bit output has twice the last axis)."""
    if bits == 8:
        return packed.astype(np.uint8)
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    out[..., 0::2] = packed & 0xF
    out[..., 1::2] = packed >> 4
    return out


def block_size(k: int, group: int) -> int:
    """MatMulNBits block for K input channels: the largest power of two in [16, group] dividing
    K; otherwise the smallest power of two >= min(K, 16) capped at `group`, K zero-padded."""
    b = group
    while b >= 16:
        if k % b == 0:
            return b
        b //= 2
    return min(group, max(16, 1 << (k - 1).bit_length()))


FIT_MIN_BLOCK = 64
"""fit's rtn layers: the smallest MatMulNBits block (fp16 scale + 4-bit zero point: 0.31 bit a weight)."""
FIT_PALETTE_BITS = 0.25
"""fit's k-means layers: the most a palette may cost per weight it serves."""
SIDE_GRID_BYTES = 8
"""Bytes a uint8 side tensor stores beside its codes: the fp32 minimum and step of its grid."""


def fit_spec(spec: QuantSpec, shape: tuple[int, int]) -> QuantSpec:
    """The concrete spec of one `(N, K)` weight: `spec` itself unless its method is fit (see the
    module docstring), in which case rtn or k-means with rows per palette for this K (one palette
    for a tensor too small to share one at `FIT_PALETTE_BITS`)."""
    if spec.method != "fit":
        return spec
    n, k = shape
    assert spec.group is not None  # QuantSpec requires one for fit
    block = block_size(k, spec.group)
    if block >= FIT_MIN_BLOCK and k % block == 0:
        return replace(spec, method="rtn")
    palettes = int(n * k * FIT_PALETTE_BITS // (2**spec.bits * 16))  # of 2^bits fp16 entries each
    return replace(spec, method="kmeans", group=math.ceil(n / palettes) if palettes > 1 else None)


def quantize_rtn(w: torch.Tensor, spec: QuantSpec) -> PackedWeight:
    """Group-wise round-to-nearest of `w (N, K)` in MatMulNBits layout (see module docstring)."""
    n, k = w.shape
    bs = block_size(k, spec.group or 32)
    blocks = math.ceil(k / bs)
    wp = torch.zeros(n, blocks * bs, dtype=torch.float64)
    wp[:, :k] = w.detach().double()
    g = wp.view(n, blocks, bs)  # (N, blocks, bs)
    levels = 2**spec.bits
    if spec.symmetric:
        idx = g.abs().argmax(dim=-1, keepdim=True)
        vmax = torch.gather(g, -1, idx).squeeze(-1)  # signed value of largest magnitude
        scale = (vmax / -(levels // 2)).half().double()
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zp = torch.full_like(scale, levels // 2)
    else:
        lo, hi = g.min(dim=-1).values, g.max(dim=-1).values
        scale = ((hi - lo) / (levels - 1)).half().double()
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zp = torch.round(-lo / scale).clamp(0, levels - 1)
    q = torch.round(g / scale[..., None]) + zp[..., None]
    codes = q.clamp(0, levels - 1).to(torch.uint8).numpy()  # (N, blocks, bs); padding -> zp (exact 0)
    return PackedWeight(spec=spec, shape=(n, k), block=bs, codes=pack(codes, spec.bits),
                        scales=scale.numpy().astype(np.float16),
                        zero_points=None if spec.symmetric else zp.numpy().astype(np.uint8))


def kmeans_1d(values: np.ndarray, levels: int, *, iters: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars from quantile initialisation: (centroids (levels,), labels).
    Centroids are unique (empty clusters are re-seeded at the worst-fit value). The values are
    sorted once, so each iteration costs O(levels log n) (prefix sums), not O(n)."""
    x = values.astype(np.float64).ravel()
    xs = np.sort(x)
    prefix = np.concatenate([[0.0], np.cumsum(xs)])
    c = np.quantile(xs, (np.arange(levels) + 0.5) / levels)
    for _ in range(iters):
        c = np.unique(c)
        while len(c) < levels:  # re-seed at the value farthest from its centroid
            far = np.abs(xs[:, None] - c[None]).min(axis=1).argmax()
            # every value is a centroid already (fewer distinct values than levels): a new top level
            seed = xs[far] if xs[far] not in c else c[-1] + 1e-6 * (1 + abs(c[-1]))
            c = np.unique(np.append(c, seed))
        c = np.sort(c)
        # cluster i holds bounds[i-1] < x <= bounds[i] (as np.searchsorted(bounds, x) labels it)
        edges = np.concatenate([[0], np.searchsorted(xs, (c[1:] + c[:-1]) / 2, side="right"), [len(xs)]])
        counts = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        if np.allclose(new, c):
            break
        c = new
    c16 = np.sort(np.unique(c.astype(np.float16)))
    while len(c16) < levels:  # fp16 rounding merged two levels: spread them apart again
        c16 = np.sort(np.unique(np.append(c16, np.nextafter(c16[-1], np.float16(np.inf)))))
    bounds = (c16[1:].astype(np.float64) + c16[:-1]) / 2
    return c16, np.searchsorted(bounds, x)


def quantize_kmeans(w: torch.Tensor, spec: QuantSpec) -> PackedWeight:
    """Palettize `w (N, K)`: one 2^bits-level fp16 palette per `spec.group` rows (or the tensor)."""
    n, k = w.shape
    rows = n if spec.group is None else spec.group
    arr = w.detach().double().numpy()
    levels = 2**spec.bits
    palettes, codes = [], np.empty((n, k), np.uint8)
    for r0 in range(0, n, rows):
        part = arr[r0:r0 + rows]
        c, labels = kmeans_1d(part, min(levels, part.size))
        if len(c) < levels:
            c = np.concatenate([c, np.full(levels - len(c), c[-1], np.float16)])
        palettes.append(c)
        codes[r0:r0 + rows] = labels.reshape(part.shape)
    return PackedWeight(spec=spec, shape=(n, k), block=0, codes=pack(codes.ravel(), spec.bits),
                        palette=np.stack(palettes).astype(np.float16))


def quantize_weight(w: torch.Tensor, spec: QuantSpec) -> PackedWeight:
    """`w (N, K)` packed by `spec` (fit resolved for this shape: the result's `spec` is rtn or kmeans)."""
    spec = fit_spec(spec, (w.shape[0], w.shape[1]))
    return quantize_rtn(w, spec) if spec.method == "rtn" else quantize_kmeans(w, spec)


def weight_layers(model: nn.Module) -> dict[str, WeightLayer]:
    """The quantization targets by module name: every `nn.Linear`, and every `nn.Conv2d` /
    `nn.ConvTranspose2d` with a square kernel equal to its stride, no padding, one group."""
    def patch_conv(m: nn.Module) -> TypeGuard[nn.Conv2d | nn.ConvTranspose2d]:
        return (isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.kernel_size[0] == m.kernel_size[1]
                and tuple(m.kernel_size) == tuple(m.stride) and tuple(m.padding) == (0, 0)
                and tuple(m.dilation) == (1, 1) and m.groups == 1
                and tuple(getattr(m, "output_padding", (0, 0))) == (0, 0))
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) or patch_conv(m)}


def matmul_weight(m: WeightLayer) -> torch.Tensor:
    """The `(N, K)` matrix `m` multiplies by. Conv2d `(O, C, p, p)`: K in (p, p, C) order, the
    channel order of ONNX `SpaceToDepth`; ConvTranspose2d `(C, O, p, p)`: N in (p, p, O) order,
    the input order of `DepthToSpace` (DCR)."""
    w = m.weight
    if isinstance(m, nn.Conv2d):
        return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)
    if isinstance(m, nn.ConvTranspose2d):
        return w.permute(2, 3, 1, 0).reshape(-1, w.shape[0])
    return w


@torch.no_grad()
def set_matmul_weight(m: WeightLayer, w2d: torch.Tensor) -> None:
    """Inverse of `matmul_weight`: write the `(N, K)` matrix back into `m.weight`."""
    w = m.weight
    if isinstance(m, nn.Conv2d):
        o, c, kh, kw = w.shape
        w2d = w2d.reshape(o, kh, kw, c).permute(0, 3, 1, 2)
    elif isinstance(m, nn.ConvTranspose2d):
        c, o, kh, kw = w.shape
        w2d = w2d.reshape(kh, kw, o, c).permute(3, 2, 0, 1)
    w.copy_(w2d.to(w.dtype))


@dataclass
class QuantizedModel:
    """Packed weights of a model's weight layers plus the size accounting."""

    packed: dict[str, PackedWeight]
    bytes: int
    bytes_fp16: int
    avg_bits: float
    avg_bits_all: float
    bits: dict[str, Bits]
    side_bits: SideBits

    def summary(self) -> dict[str, float | int | list[str]]:
        return {"avg_bits": round(self.avg_bits, 4), "avg_bits_all": round(self.avg_bits_all, 4),
                "side_bits": self.side_bits,
                "bytes": self.bytes, "bytes_fp16": self.bytes_fp16,
                "compression_vs_fp16": round(self.bytes_fp16 / self.bytes, 3),
                "layers_8bit": sorted(k for k, b in self.bits.items() if b == 8),
                "layers": len(self.packed),
                "layers_kmeans": sum(p.spec.method == "kmeans" for p in self.packed.values())}


def quantize_model(model: nn.Module, spec: QuantSpec, *, bits: dict[str, Bits] | None = None) -> QuantizedModel:
    """Quantize every weight layer of `model` (`weight_layers`) with `spec` (bits per layer from
    `bits` where given).

    `avg_bits` is over the quantized weights (codes + scales/zero points/palettes); `avg_bits_all`
    over every parameter, the rest counted as `spec.side_bits` stores them (`side_bytes`); `bytes`
    is the whole model so stored.
    """
    layers = weight_layers(model)
    chosen = {name: (bits or {}).get(name, spec.bits) for name in layers}
    packed = {name: quantize_weight(matmul_weight(m), replace(spec, bits=chosen[name]))
              for name, m in layers.items()}
    total = sum(p.numel() for p in model.parameters())
    side = side_parameters(model)
    quant_params = total - sum(p.numel() for p in side.values())
    quant_bytes = sum(p.nbytes for p in packed.values())
    nbytes = quant_bytes + sum(side_bytes(p.numel(), spec.side_bits) for p in side.values())
    return QuantizedModel(packed=packed, bytes=nbytes, bytes_fp16=2 * total, avg_bits=8 * quant_bytes / quant_params,
                          avg_bits_all=8 * nbytes / total, bits=chosen, side_bits=spec.side_bits)


def side_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters `quantize_model` leaves to `side_bits`: all but the weight layers' weights."""
    weight_ids = {id(m.weight) for m in weight_layers(model).values()}
    return {name: p for name, p in model.named_parameters() if id(p) not in weight_ids}


def side_int8(numel: int, side_bits: SideBits) -> bool:
    """Whether a side tensor of `numel` values is stored as uint8 codes (smaller than fp16 only past 8 values)."""
    return side_bits == 8 and numel > SIDE_GRID_BYTES


def side_bytes(numel: int, side_bits: SideBits) -> int:
    """Storage bytes of one side tensor: uint8 codes and its fp32 minimum and step, or fp16."""
    return numel + SIDE_GRID_BYTES if side_int8(numel, side_bits) else 2 * numel


def side_grid(t: torch.Tensor) -> tuple[np.ndarray, float, float]:
    """uint8 codes and the fp32 `(minimum, step)` of the even 256-level grid over `t`'s range;
    `t` is approximately `minimum + codes * step`."""
    x = t.detach().cpu().float().numpy()
    lo = np.float32(x.min())
    step = np.float32((np.float32(x.max()) - lo) / np.float32(255))
    if step == 0:
        return np.zeros(x.shape, np.uint8), float(lo), 0.0
    codes = np.clip(np.rint((x - lo) / step), 0, 255).astype(np.uint8)
    return codes, float(lo), float(step)


@torch.no_grad()
def round_side(p: torch.Tensor, side_bits: SideBits) -> None:
    """Round a side parameter in place to what is stored: fp16, or its uint8 grid (`side_grid`)."""
    if side_int8(p.numel(), side_bits):
        codes, lo, step = side_grid(p)
        p.copy_(torch.from_numpy(np.float32(lo) + codes.astype(np.float32) * np.float32(step)).to(p.dtype))
    else:
        p.copy_(p.half().float())


@torch.no_grad()
def dequantized_copy(model: _M, q: QuantizedModel) -> _M:
    """A copy of `model` whose weight layers hold the dequantized packed weights and whose side
    parameters are rounded as stored (`round_side` with `q.side_bits`), in fp32 for PyTorch."""
    out = copy.deepcopy(model)
    for p in side_parameters(out).values():
        round_side(p, q.side_bits)
    for name, m in weight_layers(out).items():
        set_matmul_weight(m, q.packed[name].dequantize())
    return out


OutputFn = Callable[[nn.Module], torch.Tensor]


@torch.no_grad()
def layer_sensitivity(model: nn.Module, spec: QuantSpec, output: OutputFn) -> dict[str, float]:
    """Output MSE of `output(model)` with each weight layer alone quantized to `spec` (SnapGen++)."""
    ref = output(model)
    out: dict[str, float] = {}
    for name, m in weight_layers(model).items():
        saved = m.weight.detach().clone()
        set_matmul_weight(m, quantize_weight(matmul_weight(m), spec).dequantize())
        out[name] = float(torch.mean((output(model) - ref) ** 2))
        m.weight.copy_(saved)
    return out


def mixed_bits(model: nn.Module, spec: QuantSpec, sensitivity: dict[str, float], *,
               extra_bits: float = 0.3) -> dict[str, Bits]:
    """4 bits everywhere, then 8 bits for the layers with the highest sensitivity per added bit
    while the average over the quantized weights rises by at most `extra_bits` (SnapGen++: 4 -> 4.3)."""
    layers = weight_layers(model)
    params = {n: m.weight.numel() for n, m in layers.items()}
    total = sum(params.values())
    bits: dict[str, Bits] = {n: 4 for n in layers}
    cost4 = {n: quantize_weight(matmul_weight(m), spec).nbytes for n, m in layers.items()}
    spec8 = replace(spec, bits=8)
    cost8 = {n: quantize_weight(matmul_weight(m), spec8).nbytes for n, m in layers.items()}
    budget = extra_bits * total / 8  # bytes
    order = sorted(layers, key=lambda n: -sensitivity[n] / max(cost8[n] - cost4[n], 1))
    used = 0.0
    for name in order:
        extra = cost8[name] - cost4[name]
        if sensitivity[name] > 0 and used + extra <= budget:
            bits[name], used = 8, used + extra
    return bits


def finetune_biases_norms(student: nn.Module, teacher: nn.Module, batches: Callable[[int], tuple[torch.Tensor, ...]], *,
                          side_bits: SideBits, steps: int = 100, lr: float = 1e-4) -> list[float]:
    """Self-distillation after quantization (SnapGen++): train only biases, norm affines and
    adaLN tables of the dequantized `student` to match the fp32 `teacher`'s output on
    `batches(i)` (model inputs); Linear/conv weights stay frozen. Every forward runs them rounded
    as stored (`round_side` with `side_bits`) while Adam updates fp32 copies (straight-through), so
    the rounding is trained through, not added afterwards. Returns the loss per step."""
    weights = {id(m.weight) for m in student.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))}
    train = [p for p in student.parameters() if id(p) not in weights]
    for p in student.parameters():
        p.requires_grad_(id(p) not in weights)
    masters = [p.detach().clone().requires_grad_(True) for p in train]
    opt = torch.optim.Adam(masters, lr=lr)
    losses = []
    for i in range(steps):
        _load_rounded(train, masters, side_bits)
        inputs = batches(i)
        with torch.no_grad():
            target = teacher(*inputs)
        loss = torch.mean((student(*inputs) - target) ** 2)
        opt.zero_grad(set_to_none=True)
        student.zero_grad(set_to_none=True)
        loss.backward()
        for p, m in zip(train, masters, strict=True):
            m.grad = p.grad
        opt.step()
        losses.append(loss.item())
    _load_rounded(train, masters, side_bits)
    student.requires_grad_(False)
    return losses


@torch.no_grad()
def _load_rounded(params: list[nn.Parameter], masters: list[torch.Tensor], side_bits: SideBits) -> None:
    for p, m in zip(params, masters, strict=True):
        p.copy_(m)
        round_side(p, side_bits)
