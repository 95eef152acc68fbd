"""Turn a search pick into a standalone sub-DiT: `from_supernet`, `save_subdit` / `load_subdit`.

A sub-DiT directory holds `model.safetensors` (the static DiT as `dit.*` and the text encoder as
`text.*`) and `model.json` (format, the `SubnetConfig`, the experiment TOML, the tokenizer and
where the weights came from), written atomically. `SubDiT` offers the same sampling interface as
`hwnas.train.Supernet` (`space`, `encode`, `velocity`), so `hwnas.train.generate` and
`hwnas.metrics.evaluate.evaluate` run on it unchanged.
"""

from __future__ import annotations

import copy
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hwnas.data import Tokenizer
from hwnas.io import atomic_write, atomic_write_json, checkpoint_sha256
from hwnas.model import BuiltinTextEncoder, StaticDiT, extract_subnet
from hwnas.model.vae import Autoencoder
from hwnas.paths import REPO_ROOT
from hwnas.space import SearchSpace, SubnetConfig, parse_space
from hwnas.train.checkpoint import check_finite, prefixed, unprefixed
from hwnas.train.flow import guided_velocity
from hwnas.train.supernet import Supernet, TextToImage, space_vae

WEIGHTS = "model.safetensors"
META = "model.json"
FORMAT = "hwnas-subdit-1"


@dataclass
class SubDiT(TextToImage):
    """A static sub-DiT with its text encoder; samples and evaluates like a `Supernet` of one config."""

    space: SearchSpace
    cfg: SubnetConfig
    dit: StaticDiT
    text: BuiltinTextEncoder
    tokenizer: Tokenizer
    meta: dict[str, Any] = field(default_factory=dict)
    vae: Autoencoder | None = None

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, t: torch.Tensor, cfg: SubnetConfig, *, emb: torch.Tensor,
                 mask: torch.Tensor, null: tuple[torch.Tensor, torch.Tensor] | None = None,
                 cfg_scale: float = 1.0) -> torch.Tensor:
        """As `Supernet.velocity`; `cfg` must be this model's config."""
        if cfg != self.cfg:
            raise ValueError(f"this sub-DiT is {self.cfg.id}, asked for {cfg.id}")
        return guided_velocity(self.dit, x, t, emb=emb, mask=mask, null=null, cfg_scale=cfg_scale)

    def with_dit(self, dit: StaticDiT, **meta: Any) -> SubDiT:
        """The same text side with another static DiT (a student, a quantized copy)."""
        return SubDiT(self.space, self.cfg, dit, self.text, self.tokenizer, {**self.meta, **meta}, self.vae)

    def eval(self) -> SubDiT:
        self.dit.eval()
        self.text.eval()
        return self


def from_supernet(net: Supernet, cfg: SubnetConfig, *, source: str = "") -> SubDiT:
    """Cut `cfg` out of `net` (own copies of all tensors)."""
    dit = extract_subnet(net.dit, cfg).eval()
    meta = {"format": FORMAT, "config": cfg.to_dict(), "config_id": cfg.id, "describe": cfg.describe(),
            "experiment_toml": net.meta.get("experiment_toml", ""), "tokenizer": net.tokenizer.to_dict(),
            "text_layers": int(net.meta.get("train", {}).get("text_layers", len(net.text.layers))),
            "supernet_step": net.meta.get("step"), "source": source, "vae": net.meta.get("vae")}
    return SubDiT(net.space, cfg, dit, copy.deepcopy(net.text).eval(), net.tokenizer, meta, net.vae)


def save_subdit(model: SubDiT, out: str | Path, **meta: Any) -> Path:
    """Write `model.safetensors` then `model.json` into `out`; returns `out`."""
    from safetensors.torch import save_file

    out = Path(out)
    tensors = {**prefixed("dit", model.dit.state_dict()), **prefixed("text", model.text.state_dict())}
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(out / WEIGHTS, lambda tmp: save_file(flat, tmp, metadata={"format": "pt"}))
    model.meta.update(meta)
    atomic_write_json(out / META, model.meta, sort_keys=True)
    return out


def load_subdit(path: str | Path) -> SubDiT:
    """Read a sub-DiT directory written by `save_subdit`; clear ValueErrors for bad files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(path)
    for name in (WEIGHTS, META):
        if not (directory / name).exists():
            raise ValueError(f"{directory / name}: sub-DiT file not found")
    try:
        meta = json.loads((directory / META).read_text())
        tensors = load_file(str(directory / WEIGHTS))
    except (json.JSONDecodeError, SafetensorError, OSError) as exc:
        raise ValueError(f"{directory}: corrupt sub-DiT ({exc})") from None
    check_finite(tensors, directory / WEIGHTS)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory / META}: format {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        space = parse_space(meta["experiment_toml"], source=f"{directory} (stored experiment)")
        cfg = SubnetConfig.from_dict(meta["config"])
        tokenizer = Tokenizer.from_dict(meta["tokenizer"])
        dit = StaticDiT(space, cfg)
        dit.load_state_dict(unprefixed("dit", tensors))
        text = BuiltinTextEncoder(tokenizer.vocab_size, dim=space.text_dim, layers=int(meta["text_layers"]),
                                  max_len=space.text_len)
        text.load_state_dict(unprefixed("text", tensors))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{directory}: sub-DiT does not match this hwnas version ({exc})") from None
    vae = space_vae(space, meta["experiment_toml"], source=str(directory), trained_with=meta.get("vae") or {})
    return SubDiT(space, cfg, dit, text, tokenizer, meta, vae).eval()


def run_checkpoint(run_dir: str | Path | None, checkpoint: str | None) -> str | None:
    """The supernet checkpoint whose sub-DiTs a search run ranked (no run: `checkpoint` as it is):
    `checkpoint` where given, else the
    path the run's `settings.json` records (relative to the checkout, as `display_path` writes it,
    or else to the working directory). Either must match the run's `checkpoint_sha256` by content
    (`hwnas.io.checkpoint_sha256`); other weights are refused, since they are not the ones the run
    scored. A run that records no checkpoint leaves `checkpoint` as it is."""
    if run_dir is None:
        return checkpoint
    path = Path(run_dir) / "settings.json"
    try:
        settings = json.loads(path.read_text())
    except FileNotFoundError:
        return checkpoint  # resolve_pick says what is missing
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: not a JSON object")
    recorded = settings.get("checkpoint")
    if not recorded:
        return checkpoint
    if checkpoint is None:
        candidates = [Path(recorded)] if Path(recorded).is_absolute() else [REPO_ROOT / recorded, Path(recorded)]
        chosen = next((c for c in candidates if c.exists()), None)
        if chosen is None:
            raise ValueError(f"{run_dir} was searched with checkpoint {recorded}, which is not here; "
                             "pass --checkpoint with a copy of it")
    elif not (chosen := Path(checkpoint)).exists():
        return checkpoint  # load_supernet says what is missing
    want = str((settings.get("identity") or {}).get("checkpoint_sha256") or "")
    if want and (got := checkpoint_sha256(chosen)) != want:
        raise ValueError(f"{run_dir} was searched with checkpoint {recorded} (sha256 {want[:12]}), " + (
            f"not {checkpoint} (sha256 {got[:12]}); drop --checkpoint to use the run's" if checkpoint is not None
            else f"which has changed since (sha256 {got[:12]}); pass --checkpoint with the one it searched with"))
    if checkpoint is not None:
        return checkpoint
    return recorded if Path(recorded).resolve() == chosen.resolve() else str(chosen)


def resolve_pick(run_dir: str | Path, pick: str | int) -> SubnetConfig:
    """The sub-DiT of a search run: `pick="best"` reads `best.json`, an integer N the N-th row
    (0-based) of `pareto.csv`."""
    run = Path(run_dir)
    if str(pick) == "best":
        path = run / "best.json"
        try:
            return SubnetConfig.from_dict(json.loads(path.read_text())["config"])
        except FileNotFoundError:
            raise ValueError(f"{path}: not found (is {run} a search run directory?)") from None
        except (KeyError, json.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"{path}: no valid 'config' ({exc})") from None
    try:
        index = int(pick)
    except ValueError:
        raise ValueError(f"pick must be 'best' or a row index, got {pick!r}") from None
    path = run / "pareto.csv"
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise ValueError(f"{path}: not found (is {run} a search run directory?)") from None
    if not 0 <= index < len(rows):
        raise ValueError(f"{path} has {len(rows)} picks (0..{len(rows) - 1}); got pick {index}")
    try:
        return SubnetConfig.from_json(rows[index]["config_json"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path} row {index}: no valid config_json ({exc})") from None
