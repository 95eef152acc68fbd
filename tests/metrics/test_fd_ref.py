from __future__ import annotations

import numpy as np
import pytest

from hwnas.metrics.fd_ref import frechet_distance


def _samples(rng: np.random.Generator, mean: np.ndarray, cov: np.ndarray, n: int = 400) -> np.ndarray:
    """n points whose sample mean and sample covariance (np.cov, ddof 1) are exactly `mean` and `cov`."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample covariance exactly I
    return mean + z @ np.linalg.cholesky(cov).T


@pytest.mark.parametrize("rotate", [False, True])
def test_frechet_distance_matches_the_closed_form_for_gaussians(rotate: bool) -> None:
    # FD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)); for diagonal S (or both rotated alike by Q):
    # |mu1 - mu2|^2 + sum_i (sqrt(s1_i) - sqrt(s2_i))^2
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    q = np.linalg.qr(rng.standard_normal((4, 4)))[0] if rotate else np.eye(4)
    a = _samples(rng, q @ mu1, q @ np.diag(s1) @ q.T)
    b = _samples(rng, q @ mu2, q @ np.diag(s2) @ q.T)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_scene_target_has_each_pair_the_object_count_and_the_clear_relation_of_two_objects() -> None:
    from hwnas.data.shapes import PromptSpec, Scene, ShapeObject, parse_prompt
    from hwnas.metrics.fd_ref import NO_RELATION, RELATIONS, SCENE_PAIRS, scene_target

    def scene(spec: PromptSpec, *objs: tuple[str, str, tuple[float, float]]) -> Scene:
        return Scene(tuple(ShapeObject(s, c, xy, 0.15) for c, s, xy in objs), spec)  # type: ignore[arg-type]

    # "a blue square left of a red circle" and "a red circle right of a blue square" draw the same scene
    left = scene(parse_prompt("a blue square left of a red circle"),
                 ("blue", "square", (0.2, 0.5)), ("red", "circle", (0.8, 0.55)))
    right = scene(parse_prompt("a red circle right of a blue square"),
                  ("red", "circle", (0.8, 0.55)), ("blue", "square", (0.2, 0.5)))
    t, n = scene_target(left), len(SCENE_PAIRS)
    assert t.tolist() == scene_target(right).tolist()
    assert t[SCENE_PAIRS.index(("red", "circle"))] == 1 and t[SCENE_PAIRS.index(("blue", "square"))] == 1
    assert int(t[:n].sum()) == 2 and t[n] == 2 - 1
    # red circle comes first in SCENE_PAIRS: it is right of the blue square
    assert t[-1] == 1 + RELATIONS.index("right of")
    # a diagonal layout has no clear relation; three objects of one pair (counting) have none to have
    diagonal = scene(parse_prompt("a red circle and a blue square"),
                     ("red", "circle", (0.2, 0.2)), ("blue", "square", (0.7, 0.7)))
    assert scene_target(diagonal)[-1] == 0
    three = scene(parse_prompt("three green triangles"), *[("green", "triangle", (x, 0.5)) for x in (0.2, 0.5, 0.8)])
    t3 = scene_target(three)  # one pair present, three objects: three of it
    assert int(t3[:n].sum()) == 1 and t3[SCENE_PAIRS.index(("green", "triangle"))] == 1
    assert t3[n] == 3 - 1 and t3[-1] == NO_RELATION


def test_a_reference_network_trains_saves_and_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from hwnas.metrics.fd_ref import SCENE_OUTPUTS, describe, features, load_reference, train_reference

    result = train_reference("shapes", resolution=32, out=tmp_path, steps=3, size=256)
    assert 0.0 <= result["val_match"] <= 1.0 and 0.0 <= result["heldout_match"] <= 1.0 and result["final_loss"] > 0
    net, meta = load_reference(tmp_path)
    assert meta["target"] == "scene" and meta["outputs"] == SCENE_OUTPUTS
    assert describe(meta).startswith("shapes 32px, scene target, ") and "exact match on val" in describe(meta)
    assert features(net, torch.zeros(2, 3, 32, 32)).shape == (2, 128)
    # a reference network from before the scene target still describes itself
    old = {"dataset": "shapes", "resolution": 32, "train_images": 20000, "val_exact_match": 0.25}
    assert describe(old) == "shapes 32px, words target, 25.0% exact match on val"


def test_a_relation_is_predicted_only_where_two_different_pairs_are() -> None:
    import torch

    from hwnas.metrics.fd_ref import MAX_OBJECTS, NO_RELATION, SCENE_OUTPUTS, SCENE_PAIRS, _scene_predict

    logits = torch.full((2, SCENE_OUTPUTS), -5.0)
    n = len(SCENE_PAIRS)
    logits[:, n + MAX_OBJECTS + 2] = 5.0  # the relation head says "right of" for both
    logits[0, [0, 1]] = 5.0  # two pairs present
    logits[1, 0] = 5.0  # one pair present
    pred = _scene_predict(logits)
    assert pred[0, -1] == 2 and pred[1, -1] == NO_RELATION


def test_the_reference_train_command_writes_a_classifier_eval_can_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from click.testing import CliRunner

    from hwnas.cli import main
    from hwnas.metrics.fd_ref import load_reference

    out = CliRunner().invoke(main, ["reference", "train", "--out", str(tmp_path), "--steps", "1", "--size", "128",
                                    "--threads", "1"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert summary["dataset"] == "shapes" and summary["resolution"] == 32 and "heldout_match" in summary
    assert load_reference(tmp_path)[1]["train_images"] == 128


def test_fd_ref_of_a_sub_dit_comes_with_its_real_vs_real_floor() -> None:
    import math

    from hwnas.metrics.evaluate import evaluate
    from hwnas.paths import repo_path
    from hwnas.train import load_supernet

    ckpt = repo_path("checkpoints/shapes-32")  # its reference network is the first, caption-target one
    net = load_supernet(ckpt)
    result = evaluate(net, net.space.smallest(), metric="fd_ref", n=8, steps=1, checkpoint=ckpt)
    assert math.isfinite(result["value"]) and result["floor"] > 0
    assert "words target" in result["source"] and "(the floor at this n)" in result["source"]
