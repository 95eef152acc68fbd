"""The latent autoencoder: a diffusers VAE folder that maps images to the DiT's latent and back.

A latent experiment (`latent_downsample > 1`) names a folder written by diffusers'
`save_pretrained` (`config.json` + `diffusion_pytorch_model.safetensors`). hwnas trains a small
`AutoencoderKL` on its own data (`train_autoencoder`, `hwnas vae train`); at deployment scale a
user passes any diffusers AutoencoderKL folder instead (SnapGen++ works in a 16-channel, 8x
latent) and nothing else changes.

Latents are normalised with the folder's `shift_factor` and `scaling_factor`
(`z = (mean(posterior) - shift) * scale`, diffusers' convention), so the DiT sees roughly unit
variance. Encoding uses the posterior mean: the latent of an image is deterministic.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hwnas.io import atomic_write_json
from hwnas.space import SearchSpace

# diffusers is imported where used (it is slow to import), from the module that defines AutoencoderKL:
# mypy resolves the lazy `diffusers.AutoencoderKL` to the library's torch-less placeholder class.
if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"


@dataclass
class Autoencoder:
    """A loaded VAE folder: the diffusers model, its latent shape and its content hash."""

    model: AutoencoderKL
    path: Path
    sha256: str
    channels: int
    downsample: int
    scale: float
    shift: float

    @torch.no_grad()
    def encode(self, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """Images `(B, 3, H, W)` in [-1, 1] -> normalised latents `(B, C, H/f, W/f)`."""
        device = next(self.model.parameters()).device
        out = []
        for s in range(0, len(images), batch_size):
            moments = self.model.encode(images[s:s + batch_size].to(device)).latent_dist.mean  # (b, C, h, w)
            out.append(((moments - self.shift) * self.scale).to(images.device))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """Normalised latents `(B, C, h, w)` -> images `(B, 3, h*f, w*f)` clamped to [-1, 1]."""
        device = next(self.model.parameters()).device
        out = []
        for s in range(0, len(latents), batch_size):
            z = latents[s:s + batch_size].to(device) / self.scale + self.shift
            out.append(self.model.decode(z).sample.clamp(-1.0, 1.0).to(latents.device))  # (b, 3, H, W)
        return torch.cat(out)

    def describe(self) -> str:
        return f"{self.path.name} ({self.channels} ch, {self.downsample}x, sha256 {self.sha256[:12]})"

    def to(self, device: str | torch.device) -> Autoencoder:
        """Move the model to `device` (in place)."""
        self.model.to(device)  # type: ignore[arg-type]  # diffusers wraps ModelMixin.to in functools.wraps: self unbound
        return self


def to_latent(vae: Autoencoder | None, images: torch.Tensor) -> torch.Tensor:
    """Images `(B, 3, H, W)` in [-1, 1] -> what a DiT denoises: their latents, or the images
    themselves in pixel space (`vae` None)."""
    return images if vae is None else vae.encode(images)


def to_image(vae: Autoencoder | None, latents: torch.Tensor) -> torch.Tensor:
    """What a DiT denoises `(B, C, h, w)` -> images `(B, 3, H, W)` in [-1, 1]."""
    return latents.clamp(-1.0, 1.0) if vae is None else vae.decode(latents)


def experiment_vae_path(experiment_toml: str) -> str | None:
    """`[vae] path` of an experiment TOML's text, or None where it has no `[vae]` table."""
    table = tomllib.loads(experiment_toml).get("vae")
    if table is None:
        return None
    if not isinstance(table, dict) or set(table) != {"path"} or not isinstance(table["path"], str):
        raise ValueError(f'[vae] takes exactly one key, path = "<folder>", got {table!r}')
    return table["path"]


def folder_sha256(path: str | Path) -> str:
    """SHA-256 over the folder's config and weights (what decides its latents)."""
    path = Path(path)
    h = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        h.update(name.encode())
        h.update((path / name).read_bytes())
    return h.hexdigest()


def _downsample(config: dict[str, Any]) -> int:
    """Spatial downsampling of an AutoencoderKL: one 2x per encoder level after the first."""
    return 2 ** (len(config["block_out_channels"]) - 1)


def load_autoencoder(path: str | Path, *, channels: int | None = None,
                     downsample: int | None = None) -> Autoencoder:
    """Load a diffusers AutoencoderKL folder; with `channels`/`downsample` given, check they match.

    Raises ValueError (one line, naming the folder and both shapes) for a missing or half-written
    folder, a folder that is not an AutoencoderKL, or a latent shape other than the expected one.
    """
    path = Path(path)
    missing = [name for name in (CONFIG, WEIGHTS) if not (path / name).is_file()]
    if missing:
        raise ValueError(f"{path}: not a VAE folder (missing {', '.join(missing)}); "
                         "write one with `hwnas vae train` or diffusers' save_pretrained")
    try:
        config = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path / CONFIG}: not valid JSON ({exc})") from None
    if config.get("_class_name") != "AutoencoderKL" or "block_out_channels" not in config:
        raise ValueError(f"{path}: expected a diffusers AutoencoderKL folder, got "
                         f"{config.get('_class_name')!r}")
    have = (int(config["latent_channels"]), _downsample(config))
    want = (channels if channels is not None else have[0], downsample if downsample is not None else have[1])
    if have != want:
        raise ValueError(f"{path}: VAE latent is {have[0]} channels at {have[1]}x downsampling, "
                         f"the experiment expects {want[0]} channels at {want[1]}x")
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its "install accelerate" advice is noise here
    try:
        model = AutoencoderKL.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: cannot load the VAE ({first})") from None
    model.eval().requires_grad_(False)
    shift = config.get("shift_factor")
    return Autoencoder(model=model, path=path, sha256=folder_sha256(path), channels=have[0],
                       downsample=have[1], scale=float(config.get("scaling_factor") or 1.0),
                       shift=float(shift) if shift is not None else 0.0)


def build_autoencoder(*, channels: int, block_out: tuple[int, ...], resolution: int) -> AutoencoderKL:
    """A small AutoencoderKL: `len(block_out)` levels (downsampling 2^(levels-1)), one ResNet
    layer per level, `channels` latent channels."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * len(block_out),
        up_block_types=("UpDecoderBlock2D",) * len(block_out),
        block_out_channels=block_out, layers_per_block=1, norm_num_groups=min(32, min(block_out)),
        sample_size=resolution,
    )


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)  # (B,)
    return float((10 * torch.log10(4.0 / mse)).mean())


def train_autoencoder(*, dataset: str, resolution: int, out: str | Path, channels: int = 4,
                      block_out: tuple[int, ...] = (32, 64), steps: int = 1500, batch_size: int = 32,
                      lr: float = 2e-3, kl_weight: float = 1e-4, dataset_size: int = 20000,
                      seed: int = 0, log_every: int = 100, device: str = "cpu") -> dict[str, Any]:
    """Train a small AutoencoderKL on `dataset` (MSE + `kl_weight` x KL, AdamW, cosine lr), set its
    latent normalisation from the training latents, write it to `out` with `save_pretrained`, and
    return its reconstruction quality on the validation split (`evaluate_autoencoder`)."""
    from hwnas.data import make_dataset

    out = Path(out)
    torch.manual_seed(seed)
    data = make_dataset(dataset, split="train", resolution=resolution, size=dataset_size, seed=seed)
    images = torch.stack([data[i][0] for i in range(len(data))]).to(device)  # (N, 3, H, W)
    model = build_autoencoder(channels=channels, block_out=block_out, resolution=resolution)
    model.to(device)  # type: ignore[arg-type]  # as in Autoencoder.to
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    start, log = time.perf_counter(), []
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        x = images[torch.randint(len(images), (batch_size,), generator=g).to(device)]
        post = model.encode(x).latent_dist
        recon = model.decode(post.sample(generator=None)).sample
        mse = torch.mean((recon - x) ** 2)
        kl = post.kl().mean() / x[0].numel()
        loss = mse + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log.append({"step": step + 1, "mse": round(mse.item(), 6), "kl": round(kl.item(), 4),
                        "wall_s": round(time.perf_counter() - start, 1)})
    model.eval()
    with torch.no_grad():
        sample = images[:4096]
        z = torch.cat([model.encode(sample[s:s + 256]).latent_dist.mean for s in range(0, len(sample), 256)])
    model.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1.0 / z.std()))
    out.mkdir(parents=True, exist_ok=True)
    model.cpu().save_pretrained(out, safe_serialization=True)
    vae = load_autoencoder(out)
    vae.to(device)
    quality = evaluate_autoencoder(vae, dataset=dataset, resolution=resolution)
    summary = {"steps": steps, "batch_size": batch_size, "lr": lr, "kl_weight": kl_weight,
               "block_out_channels": list(block_out), "latent_channels": channels,
               "downsample": vae.downsample, "dataset": dataset, "resolution": resolution,
               "dataset_size": dataset_size, "seed": seed, "device": str(torch.device(device)),
               "cpu_threads": torch.get_num_threads(),
               "train_wall_s": round(time.perf_counter() - start, 1), "log": log, **quality}
    atomic_write_json(out / "train_summary.json", summary)
    return summary


def train_autoencoder_for(space: SearchSpace, *, out: str | Path, steps: int = 1500, batch_size: int = 32,
                          device: str = "cpu") -> dict[str, Any]:
    """`train_autoencoder` shaped by a latent experiment: its dataset, resolution and latent channels,
    one down-sampling level per factor of 2 of `latent_downsample` (32, 64, 128, 128... channels).
    Refuses a pixel-space experiment and an `out` that already holds files."""
    down = space.latent_downsample
    if down == 1:
        raise ValueError(f"{space.name}: a pixel-space experiment (latent_downsample 1) has no VAE")
    levels = down.bit_length()
    if 2 ** (levels - 1) != down:
        raise ValueError(f"{space.name}: latent_downsample must be a power of 2, got {down}")
    if Path(out).exists() and any(Path(out).iterdir()):
        raise ValueError(f"{out} is not empty; choose a new --out")
    block_out = tuple(min(32 * 2**i, 128) for i in range(levels))
    return train_autoencoder(dataset=space.dataset, resolution=space.resolution, out=out,
                             channels=space.latent_channels, block_out=block_out,
                             steps=steps, batch_size=batch_size, device=device)


def evaluate_autoencoder(vae: Autoencoder, *, dataset: str, resolution: int, n: int = 200,
                         seed: int = 0) -> dict[str, Any]:
    """PSNR of reconstructions of `n` validation images and, on shapes, the compositional checker's
    accuracy on those reconstructions next to its accuracy on the originals."""
    from hwnas.data import ShapesDataset, make_dataset
    from hwnas.metrics.compositional import score

    data = make_dataset(dataset, split="val", resolution=resolution, size=n, seed=seed)
    x = torch.stack([data[i][0] for i in range(n)])
    recon = vae.decode(vae.encode(x))
    result: dict[str, Any] = {"val_n": n, "psnr_db": round(psnr_db(recon, x), 2)}
    if isinstance(data, ShapesDataset):  # make_dataset("shapes", ...)
        specs = [data.scene(i).spec for i in range(n)]
        result["checker_on_reconstructions"] = score(recon.permute(0, 2, 3, 1).numpy(), specs).accuracy
        result["checker_on_originals"] = score(x.permute(0, 2, 3, 1).numpy(), specs).accuracy
    return result
