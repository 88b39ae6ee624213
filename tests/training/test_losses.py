"""Each training loss against its formula, computed another way (NumPy, explicit loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avatar_cli.training.losses import (discriminator_loss, generator_loss, mixed_supervision_weight, motion_loss,
                                        pseudo_huber)


def _fixed(shape, seed):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def test_pseudo_huber_matches_formula():
    a, b = _fixed((2, 4, 3, 2, 2), 0), _fixed((2, 4, 3, 2, 2), 1)
    for c in (0.5, None):
        got = pseudo_huber(a, b, c).numpy()
        an, bn = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
        cc = 0.00054 * math.sqrt(4 * 3 * 2 * 2) if c is None else c
        want = [math.sqrt(((an[i] - bn[i]) ** 2).sum() + cc * cc) - cc for i in range(2)]
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # small differences: ~ squared / (2c); large: ~ L2 distance - c
    tiny = pseudo_huber(torch.zeros(1, 4), torch.full((1, 4), 1e-3), c=1.0)
    assert float(tiny) == pytest.approx(4e-6 / 2, rel=1e-3)
    big = pseudo_huber(torch.zeros(1, 4), torch.full((1, 4), 100.0), c=1.0)
    assert float(big) == pytest.approx(200.0 - 1.0, rel=1e-4)


def test_motion_loss_is_mean_squared_difference_of_frame_changes():
    pred, true = _fixed((2, 4, 5, 3, 3), 2), _fixed((2, 4, 5, 3, 3), 3)
    got = motion_loss(pred, true).numpy()
    p, t = pred.numpy(), true.numpy()
    for i in range(2):
        total, count = 0.0, 0
        for f in range(4):
            d = (p[i, :, f + 1] - p[i, :, f]) - (t[i, :, f + 1] - t[i, :, f])
            total += (d.astype(np.float64) ** 2).sum()
            count += d.size
        assert got[i] == pytest.approx(total / count, rel=1e-5)
    # a constant offset of every frame is no motion error
    assert float(motion_loss(true + 3.0, true).max()) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("ratio, expected", [
    (0.0, 0.0),
    (10.0, 0.2 * 10 ** 0.25),
    (30.0, 0.2 * 30 ** 0.25),                      # the peak: both branches meet
    (65.0, 0.2 * 30 ** 0.25 * (100 - 65) / 70),    # half-way down
    (100.0, 0.0),
    (150.0, 0.0),
])
def test_mixed_supervision_weight(ratio, expected):
    got = mixed_supervision_weight(torch.tensor([ratio]))
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_mixed_supervision_weight_is_per_sample_and_continuous():
    r = torch.tensor([29.999, 30.0, 30.001, 99.999])
    w = mixed_supervision_weight(r)
    assert w.shape == (4,)
    assert float(w[0]) == pytest.approx(float(w[2]), abs=1e-4)
    assert float(w[3]) == pytest.approx(0.0, abs=1e-4)


def test_gan_losses():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.3, 1.5])
    np.testing.assert_allclose(discriminator_loss(real, fake, "hinge").numpy(),
                               [max(0, 1 - r) + max(0, 1 + f) for r, f in zip(real.tolist(), fake.tolist())], rtol=1e-6)
    np.testing.assert_allclose(generator_loss(fake, "hinge").numpy(), [-f for f in fake.tolist()], rtol=1e-6)

    def softplus(x):
        return math.log1p(math.exp(x))
    np.testing.assert_allclose(discriminator_loss(real, fake, "non-saturating").numpy(),
                               [softplus(-r) + softplus(f) for r, f in zip(real.tolist(), fake.tolist())], rtol=1e-6)
    np.testing.assert_allclose(generator_loss(fake, "non-saturating").numpy(), [softplus(-f) for f in fake.tolist()],
                               rtol=1e-6)
    with pytest.raises(ValueError):
        generator_loss(fake, "wasserstein")
