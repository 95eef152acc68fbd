"""The latent autoencoder: a diffusers folder in, latents of the experiment's shape out; a folder
of the wrong shape, a half-written one or another VAE than the checkpoint's is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_space import TINY_EXPERIMENT

from hwnas.metrics.val_loss import make_val_set, val_loss
from hwnas.model.vae import build_autoencoder, folder_sha256, load_autoencoder
from hwnas.train import generate, load_supernet, train
from hwnas.train.checkpoint import META

pytest.importorskip("diffusers")


def _tiny_vae(path: Path, *, channels: int = 4, levels: int = 2) -> Path:
    torch.manual_seed(0)
    model = build_autoencoder(channels=channels, block_out=(8,) * levels, resolution=16)
    model.register_to_config(scaling_factor=2.0, shift_factor=0.1)
    model.save_pretrained(path, safe_serialization=True)
    return path


def _latent_experiment(tmp_path: Path, vae: Path) -> Path:
    text = (TINY_EXPERIMENT.replace("latent_downsample = 1", "latent_downsample = 2")
            .replace("latent_channels = 3", "latent_channels = 4")
            .replace("patch_size = 4", "patch_size = 2")
            .replace('[model]', f'[vae]\npath = "{vae}"\n\n[model]'))
    path = tmp_path / "tiny-latent.toml"
    path.write_text(text)
    return path


def test_encode_decode_shapes_and_normalisation(tmp_path: Path) -> None:
    ae = load_autoencoder(_tiny_vae(tmp_path / "vae"), channels=4, downsample=2)
    assert (ae.channels, ae.downsample, ae.scale, ae.shift) == (4, 2, 2.0, 0.1)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (3, 4, 8, 8)
    raw = ae.model.encode(x).latent_dist.mean
    torch.testing.assert_close(z, (raw - 0.1) * 2.0)
    y = ae.decode(z)
    assert y.shape == (3, 3, 16, 16) and y.abs().max() <= 1.0
    torch.testing.assert_close(y, ae.model.decode(raw).sample.clamp(-1, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels, downsample, message", [
    (3, 2, "4 channels at 2x downsampling, the experiment expects 3 channels at 2x"),
    (4, 4, "4 channels at 2x downsampling, the experiment expects 4 channels at 4x"),
])
def test_wrong_latent_shape_names_both(tmp_path: Path, channels: int, downsample: int, message: str) -> None:
    folder = _tiny_vae(tmp_path / "vae")
    with pytest.raises(ValueError, match=message):
        load_autoencoder(folder, channels=channels, downsample=downsample)


def test_missing_or_half_written_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a VAE folder"):
        load_autoencoder(tmp_path / "nothing")
    folder = _tiny_vae(tmp_path / "vae")
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 100)  # truncated weights
    with pytest.raises(ValueError, match="cannot load the VAE"):
        load_autoencoder(folder)
    (folder / "config.json").write_text('{"_class_name": "AutoencoderTiny"}')
    with pytest.raises(ValueError, match="expected a diffusers AutoencoderKL"):
        load_autoencoder(folder)


def test_latent_supernet_trains_samples_and_checks_its_vae(tmp_path: Path) -> None:
    vae = _tiny_vae(tmp_path / "vae")
    experiment = _latent_experiment(tmp_path, vae)
    out = tmp_path / "run"
    train(experiment, out=out, steps=2, progress=False, overrides={"dataset_size": 64})
    meta = json.loads((out / META).read_text())
    assert meta["vae"]["sha256"] == folder_sha256(vae)
    net = load_supernet(out)
    assert net.vae is not None and net.vae.sha256 == folder_sha256(vae)
    val = make_val_set(net, n=8)
    assert val.x0.shape == (8, 4, 8, 8)
    assert val_loss(net, net.space.largest(), val) > 0
    images = generate(net, ["a red circle"], net.space.smallest(), steps=2, cfg_scale=1.0)
    assert images.shape == (1, 3, 16, 16)
    # another VAE of the same shape in its place: refused, naming both hashes
    shutil.rmtree(vae)
    torch.manual_seed(1)
    model = build_autoencoder(channels=4, block_out=(8, 8), resolution=16)
    model.save_pretrained(vae, safe_serialization=True)
    with pytest.raises(ValueError, match=r"trained with VAE sha256 \w{12}, but .* has sha256 \w{12}"):
        load_supernet(out)


def test_standalone_run_trains_one_subnet(tmp_path: Path, tiny_experiment: Path) -> None:
    from hwnas.space import load_space

    cfg = load_space(tiny_experiment).smallest()
    out = tmp_path / "alone"
    summary = train(tiny_experiment, out=out, steps=3, progress=False, standalone=cfg,
                    overrides={"val_every": 3})
    assert summary["steps"] == 3
    meta = json.loads((out / META).read_text())
    assert meta["standalone"] == cfg.to_dict()
    assert (out / "val_log.csv").read_text().splitlines()[0] == "step,subnet"
    with pytest.raises(ValueError, match="other settings"):
        train(tiny_experiment, out=out, steps=4, resume=True, progress=False,
              overrides={"val_every": 3})  # the supernet cannot resume a stand-alone run


def test_max_wall_s_stops_with_a_checkpoint_and_resumes(tmp_path: Path, tiny_experiment: Path) -> None:
    out = tmp_path / "run"
    summary = train(tiny_experiment, out=out, steps=50, progress=False, max_wall_s=1.0)
    assert 1 <= summary["steps"] < 50
    assert json.loads((out / META).read_text())["step"] == summary["steps"]
    again = train(tiny_experiment, out=out, steps=50, resume=True, progress=False)
    assert again["steps"] == 50
