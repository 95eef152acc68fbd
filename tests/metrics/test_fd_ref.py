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
