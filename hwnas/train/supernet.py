"""The trained proxy supernet as one object: elastic DiT + text encoder + tokenizer + space, and
for a latent experiment the autoencoder whose latent the DiT works in.

`load_supernet()` without a path loads the default proxy checkpoint that ships with hwnas
(`checkpoints/shapes-32/`; the latent proxy `checkpoints/shapes-latent/` is not trained far
enough yet to replace it, see the README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hwnas.data import Tokenizer
from hwnas.model import BuiltinTextEncoder, ElasticDiT
from hwnas.model.vae import Autoencoder, experiment_vae_path, load_autoencoder, to_image, to_latent
from hwnas.paths import REPO_ROOT, repo_path
from hwnas.space import SearchSpace, SubnetConfig, parse_space
from hwnas.train.checkpoint import load_weights, prefixed, unprefixed
from hwnas.train.flow import guided_velocity

DEFAULT_CHECKPOINT = REPO_ROOT / "checkpoints" / "shapes-32"


class TextToImage:
    """What the supernet and an extracted sub-DiT (`hwnas.compress.SubDiT`) share around their DiT: the
    text side, the latent side and the device. Subclasses are dataclasses holding these attributes."""

    space: SearchSpace
    dit: torch.nn.Module
    text: BuiltinTextEncoder
    tokenizer: Tokenizer
    vae: Autoencoder | None

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    def to_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> what the DiT denoises (the images themselves without a VAE)."""
        return to_latent(self.vae, images)

    def to_image(self, latents: torch.Tensor) -> torch.Tensor:
        return to_image(self.vae, latents)

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> text embeddings (B, L, Ct) and mask (B, L), on the text encoder's device."""
        ids = self.tokenizer.encode(captions, max_len=self.space.text_len)
        return self.text.encode(ids.to(next(self.text.parameters()).device))


@dataclass
class Supernet(TextToImage):
    """`vae` is None for a pixel-space experiment (`latent_downsample` 1): images are the latents."""

    space: SearchSpace
    dit: ElasticDiT
    text: BuiltinTextEncoder
    tokenizer: Tokenizer
    meta: dict[str, Any] = field(default_factory=dict)
    vae: Autoencoder | None = None

    def to(self, device: str | torch.device) -> Supernet:
        """Move the DiT, the text encoder and the autoencoder to `device` (in place)."""
        self.dit.to(device)
        self.text.to(device)
        if self.vae is not None:
            self.vae.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**prefixed("dit", self.dit.state_dict()), **prefixed("text", self.text.state_dict())}

    def eval(self) -> Supernet:
        self.dit.eval()
        self.text.eval()
        return self

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, t: torch.Tensor, cfg: SubnetConfig, *, emb: torch.Tensor,
                 mask: torch.Tensor, null: tuple[torch.Tensor, torch.Tensor] | None = None,
                 cfg_scale: float = 1.0) -> torch.Tensor:
        """v(x, t) of sub-DiT `cfg`; with `null` text and `cfg_scale` != 1, classifier-free guided."""
        return guided_velocity(lambda *inputs: self.dit(*inputs, cfg), x, t, emb=emb, mask=mask, null=null,
                               cfg_scale=cfg_scale)


def build_supernet(space: SearchSpace, tokenizer: Tokenizer, *, text_layers: int,
                   vae: Autoencoder | None = None) -> Supernet:
    dit = ElasticDiT(space)
    text = BuiltinTextEncoder(tokenizer.vocab_size, dim=space.text_dim, layers=text_layers,
                              max_len=space.text_len)
    return Supernet(space=space, dit=dit, text=text, tokenizer=tokenizer, vae=vae)


def space_vae(space: SearchSpace, experiment_toml: str, *, override: str | Path | None = None,
              source: str = "experiment", trained_with: dict[str, str] | None = None) -> Autoencoder | None:
    """The autoencoder of a latent experiment (None in pixel space), checked against its latent
    shape: `override` if given, else the experiment's `[vae] path` (relative to the repository).
    For a trained model, `trained_with` is the `vae` entry of its metadata; another VAE (by content
    hash) is refused."""
    if space.latent_downsample == 1 and override is None:
        return None
    folder = override if override is not None else experiment_vae_path(experiment_toml)
    if folder is None:
        raise ValueError(f"{source}: a latent experiment (latent_downsample {space.latent_downsample}) "
                         "needs [vae] path = \"<diffusers VAE folder>\"")
    vae = load_autoencoder(repo_path(folder), channels=space.latent_channels,
                           downsample=space.latent_downsample)
    if trained_with is not None and trained_with.get("sha256") != vae.sha256:
        raise ValueError(f"{source}: trained with VAE sha256 {str(trained_with.get('sha256'))[:12]}, "
                         f"but {folder} has sha256 {vae.sha256[:12]}")
    return vae


def load_supernet(path: str | Path | None = None, *, vae: str | Path | None = None) -> Supernet:
    """Load a checkpoint directory written by `hwnas train` (default: the shipped proxy).

    A latent checkpoint loads the autoencoder it was trained with (`vae` overrides where to find
    it); an autoencoder whose content hash differs from the one recorded at training is refused.
    """
    directory = Path(path) if path is not None else DEFAULT_CHECKPOINT
    tensors, meta = load_weights(directory)
    try:
        space = parse_space(meta["experiment_toml"], source=f"{directory} (stored experiment)")
        tokenizer = Tokenizer.from_dict(meta["tokenizer"])
        autoencoder = space_vae(space, meta["experiment_toml"], override=vae, source=str(directory),
                                trained_with=meta.get("vae") or {})
        net = build_supernet(space, tokenizer, text_layers=int(meta["train"]["text_layers"]),
                             vae=autoencoder)
        net.dit.load_state_dict(unprefixed("dit", tensors))
        net.text.load_state_dict(unprefixed("text", tensors))
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"{directory}: checkpoint does not match this hwnas version ({exc})") from None
    net.meta = meta
    return net.eval()
