from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from hwnas.space import (
    STAGES,
    SearchSpace,
    StageConfig,
    SubnetConfig,
    load_config,
    load_space,
    resolve_config,
)

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.toml"))


@pytest.fixture(params=EXPERIMENTS, ids=lambda p: p.stem)
def space(request: pytest.FixtureRequest) -> SearchSpace:
    return load_space(request.param)


def test_experiments_exist() -> None:
    assert {p.stem for p in EXPERIMENTS} >= {"snapgenpp-1024", "shapes-32"}


def test_json_round_trip_over_random_members(space: SearchSpace) -> None:
    rng = random.Random(0)
    for _ in range(200):
        cfg = space.sample(rng)
        assert space.contains(cfg)
        again = SubnetConfig.from_json(cfg.to_json())
        assert again == cfg
        assert again.id == cfg.id
        assert hash(again) == hash(cfg)


def test_id_is_stable_and_short(space: SearchSpace) -> None:
    full = space.preset("full")
    assert len(full.id) == 10
    # The id is a hash of the canonical JSON: key order in the input does not matter.
    shuffled = json.dumps({k: full.to_dict()[k] for k in reversed(STAGES)})
    assert SubnetConfig.from_json(shuffled).id == full.id
    assert space.preset("small").id != full.id


def test_shared_choices_give_same_id_across_scales() -> None:
    deploy = load_space(ROOT / "experiments/snapgenpp-1024.toml")
    for other in ("shapes-32", "snapgenpp-256"):
        scaled = load_space(ROOT / f"experiments/{other}.toml")
        assert scaled.stages == deploy.stages
        for name in ("tiny", "small", "full"):
            assert deploy.preset(name) == scaled.preset(name)


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (dict(width=0.0, depth=2, ffn_ratio=2, attn="global"), "width"),
        (dict(width=1.5, depth=2, ffn_ratio=2, attn="global"), "width"),
        (dict(width=0.5, depth=0, ffn_ratio=2, attn="global"), "depth"),
        (dict(width=0.5, depth=2, ffn_ratio=0, attn="global"), "ffn_ratio"),
        (dict(width=0.5, depth=2, ffn_ratio=2, attn="sparse"), "attn"),
        (dict(width=0.5, depth=2, ffn_ratio=2, attn="assa", radius=0), "radius"),
        (dict(width=0.5, depth=2, ffn_ratio=2, attn="global", radius=1), "radius"),
        (dict(width=0.5, depth=2.5, ffn_ratio=2, attn="global"), "depth"),
    ],
)
def test_stage_validation(stage: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StageConfig(**stage)


def test_subnet_validation_of_attention_per_stage() -> None:
    sparse = StageConfig(width=0.5, depth=2, ffn_ratio=2, attn="assa", radius=1)
    full = StageConfig(width=0.5, depth=2, ffn_ratio=2, attn="full")
    with pytest.raises(ValueError, match="middle stage uses full attention"):
        SubnetConfig(down=sparse, middle=sparse, up=sparse)
    with pytest.raises(ValueError, match="down.attn"):
        SubnetConfig(down=full, middle=full, up=sparse)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"down": {}, "middle": {}}', "missing"),
        ('{"down": 1, "middle": 1, "up": 1}', "down must be a JSON object"),
    ],
)
def test_from_json_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SubnetConfig.from_json(text)


def test_from_json_unknown_field_is_named() -> None:
    data = load_space(EXPERIMENTS[0]).preset("small").to_dict()
    data["up"]["kernel"] = 3
    with pytest.raises(ValueError, match="up has unknown keys"):
        SubnetConfig.from_dict(data)


def test_validate_names_the_choice(space: SearchSpace) -> None:
    cfg = space.preset("small")
    bad = replace(cfg, middle=replace(cfg.middle, depth=7))
    with pytest.raises(ValueError, match=r"middle.depth=7 is not offered"):
        space.validate(bad)
    assert not space.contains(bad)


def test_presets_follow_the_paper(space: SearchSpace) -> None:
    for name, width in (("tiny", 0.375), ("small", 0.5), ("full", 1.0)):
        cfg = space.preset(name)
        for stage in STAGES:
            s = cfg.stage(stage)
            assert s.width == width
            assert s.depth == space.max_depth(stage)
        assert (cfg.down.ffn_ratio, cfg.middle.ffn_ratio, cfg.up.ffn_ratio) == (4, 3, 4)
        assert cfg.down.attn == cfg.up.attn == "assa"
    with pytest.raises(ValueError, match="unknown preset"):
        space.preset("huge")


def test_largest_and_smallest_bound_every_sample(space: SearchSpace) -> None:
    big, small = space.largest(), space.smallest()
    rng = random.Random(1)
    for _ in range(100):
        cfg = space.sample(rng)
        for stage in STAGES:
            s = cfg.stage(stage)
            assert small.stage(stage).width <= s.width <= big.stage(stage).width
            assert small.stage(stage).depth <= s.depth <= big.stage(stage).depth


def test_mutation_stays_in_space(space: SearchSpace) -> None:
    rng = random.Random(2)
    changed = 0
    for _ in range(200):
        a = space.sample(rng)
        m = space.mutate(a, rng, prob=0.3)
        space.validate(m)
        changed += m != a
    assert changed > 100
    assert space.mutate(a, rng, prob=0.0) == a


def test_sampling_is_seeded(space: SearchSpace) -> None:
    first = [space.sample(random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]


def test_space_size_counts_radius_only_for_local_attention(space: SearchSpace) -> None:
    # per outer stage: 5 widths x 3 depths x 3 ffn x (assa:2 + bna:2 + global:1); middle: 5 x 4 x 3.
    assert space.size() == (5 * 3 * 3 * 5) ** 2 * (5 * 4 * 3)


def test_kv_heads_divide_heads(space: SearchSpace) -> None:
    for width in space.stages["down"].width:
        heads = space.heads(width)
        kv = space.kv_heads_for(heads)
        assert heads % kv == 0 and 1 <= kv <= space.kv_heads
    assert space.kv_heads_for(space.heads_max) == space.kv_heads


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("hidden_size = 64", "hidden_size = 60"), "hidden_size 60 is not a multiple"),
        (lambda t: t.replace("head_dim = 8\n", ""), r"\[model\] is missing \['head_dim'\]"),
        (lambda t: t.replace("[model]", "[model]\nwidth_mult = 2"), "unknown key 'width_mult' in \\[model\\]"),
        (lambda t: t.replace("hidden_size =", "hiden_size ="), "unknown key 'hiden_size' in \\[model\\]; did you "
                                                                "mean 'hidden_size'\\?"),
        (lambda t: t.replace("[space.up]", "[space.left]"), r"unknown table \[space.left\]; expected one of "
                                                          r"\[space.down\], \[space.middle\], \[space.up\]"),
        (lambda t: t.replace("[space.up]", "[space.upp]"), r"unknown table \[space.upp\]; did you mean \[space.up\]"),
        (lambda t: t.replace("[train]", "[trian]"), r"unknown table \[trian\]; did you mean \[train\]\?"),
        (lambda t: t + "\n[data]\nroot = 'x'\n", r"unknown table \[data\]"),
        (lambda t: t.replace('dataset = "shapes"', 'datset = "shapes"'), "unknown key 'datset' in "
                                                                       r"\[experiment\]; did you mean 'dataset'"),
        (lambda t: t.replace("[space.down]", "[space.down]\nkernel = [3]"), r"unknown key 'kernel' in \[space.down\]"),
        (lambda t: t.replace("preset_ffn_ratio = 3", "preset_ffn_ratio = 5"), "preset_ffn_ratio 5"),
        (lambda t: t.replace("width = [0.375", "width = [0.3", 1), "not a whole number of heads"),
        (lambda t: t + "\n[[", "not valid TOML"),
    ],
)
def test_malformed_experiment_names_file_and_field(tmp_path: Path, edit, message: str) -> None:
    text = (ROOT / "experiments/shapes-32.toml").read_text()
    path = _write(tmp_path, edit(text))
    with pytest.raises(ValueError, match=message) as info:
        load_space(path)
    assert str(path) in str(info.value)


def test_missing_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="experiment file not found"):
        load_space(tmp_path / "nope.toml")
    with pytest.raises(ValueError, match="config file not found"):
        load_config(tmp_path / "nope.json")


def test_load_config_file(tmp_path: Path) -> None:
    cfg = load_space(EXPERIMENTS[0]).preset("tiny")
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    assert load_config(path) == cfg


def test_vae_table_is_an_experiment_table(tmp_path: Path) -> None:
    """[vae] (a latent autoencoder) belongs to another stage: load_space accepts it unread."""
    text = (ROOT / "experiments/shapes-32.toml").read_text() + "\n[vae]\nfolder = 'checkpoints/vae'\n"
    assert load_space(_write(tmp_path, text)) == load_space(ROOT / "experiments/shapes-32.toml")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace("batch_size =", "batchsize ="), r"unknown key 'batchsize' in \[train\]; did you mean "
                                                          r"'batch_size'\?"),
    (lambda t: t.replace("[train]", "[train]\nbogus_knob = 1"), r"unknown key 'bogus_knob' in \[train\]; expected "
                                                                 r"one of 'batch_size', "),
])
def test_train_table_unknown_key_names_nearest(tmp_path: Path, edit, message: str) -> None:
    from hwnas.train.config import load_train_config

    path = _write(tmp_path, edit((ROOT / "experiments/shapes-32.toml").read_text()))
    with pytest.raises(ValueError, match=message) as info:
        load_train_config(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "", "tab\tname", "a\\b"])
def test_experiment_name_must_be_a_plain_name(tmp_path: Path, name: str) -> None:
    """The name becomes latency_tables/<device>/<name>.csv: no separators, no '..'."""
    text = (ROOT / "experiments/shapes-32.toml").read_text().replace('name = "shapes-32"', f"name = {name!r}")
    with pytest.raises(ValueError, match=r"\[experiment\] name must use letters, digits"):
        load_space(_write(tmp_path, text))


def test_resolve_config_reads_every_spelling(space: SearchSpace, tmp_path: Path) -> None:
    small = space.preset("small")
    path = tmp_path / "c.json"
    path.write_text(small.to_json())
    for text in ("small", f" {small.id} ", small.to_json(), str(path)):
        assert resolve_config(space, text) == small, text
    assert resolve_config(space, "largest") == space.largest()
    assert resolve_config(space, space.smallest().id) == space.smallest()


@pytest.mark.parametrize("text, message", [
    ("smal", "unknown config 'smal': not one of tiny, small, full, largest, smallest"),
    ("missing.json", "missing.json: config file not found"),
    ('{"down": 1}', "missing \\['middle', 'up'\\]"),
])
def test_resolve_config_refuses_with_the_value(space: SearchSpace, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_config(space, text)


def test_resolve_config_checks_the_space(space: SearchSpace) -> None:
    d = space.largest().to_dict()
    d["down"]["depth"] = 99
    with pytest.raises(ValueError, match="down.depth"):
        resolve_config(space, json.dumps(d))
