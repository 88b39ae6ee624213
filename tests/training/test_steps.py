"""The Adv-LCM, EFT and FADA training steps as units: stub student, teacher and discriminator
networks record the timesteps, inputs and targets they receive, and every loss term is recomputed
here by hand from the papers' equations for a tiny batch (one clip of 3 frames of 2x2 latents).

The stubs are linear in their input and read the conditions (the audio and reference tokens are
constants A and R, zero in the null branch), so the teacher's multi-CFG prediction has the closed
form cfg_a A + cfg_r R + 0.1 x (FADA eq. 9 with eps_a = 0.1 x + A + R, eps_r = 0.1 x + R,
eps_b = 0.1 x). The schedule is SD1.5's scaled-linear one, written out again here.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

import avatar_cli.training.fada as fada_module
import avatar_cli.training.osa_lcm as osa_module
from avatar_cli.models.presets import SD15_SCHEDULER
from avatar_cli.sampling.guidance import Conditions

A, R = 0.7, -0.4          # the audio and reference tokens' values (0 in the null branch)
SHAPE = (1, 4, 3, 2, 2)   # (B, C, F, h, w)


def alphas_cumprod() -> np.ndarray:
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1 - betas)


AC = alphas_cumprod()


def _conditions(audio: float, ref: float) -> Conditions:
    return Conditions(torch.zeros(1, 2, 8), torch.full((1, 3, 2, 8), audio), {"r": torch.full((1, 4, 8), ref)}, None)


class StubConditioner:
    def __init__(self, *args):
        pass

    def __call__(self, example):
        return _conditions(A, R)

    def null(self, cond):
        return _conditions(0.0, 0.0)


class StubUNet(torch.nn.Module):
    """eps = w x + mean(audio tokens) + mean(reference tokens), per batch element; records each call."""

    def __init__(self, w: float, cfg_tokens: int = 0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))
        self.calls = []
        self.config = types.SimpleNamespace(cfg_tokens=cfg_tokens)
        self.dtype = torch.float32

    def forward(self, sample, timestep, encoder_hidden_states=None, audio_embeds=None, reference_features=None,
                guidance_scales=None, **_):
        self.calls.append({"sample": sample.detach().clone(), "t": int(timestep), "scales": guidance_scales,
                           "audio": audio_embeds.flatten(1).mean(1), "ref": reference_features["r"].flatten(1).mean(1)})
        shift = audio_embeds.flatten(1).mean(1) + reference_features["r"].flatten(1).mean(1)
        return self.w * sample + shift.view(-1, 1, 1, 1, 1)


class StubDiscriminator(torch.nn.Module):
    """logits = d * mean(latents) per sample; records (latents, s)."""

    def __init__(self, *args):
        super().__init__()
        self.d = torch.nn.Parameter(torch.tensor(1.5))
        self.calls = []

    def forward(self, latents, timestep, **conditions):
        self.calls.append({"latents": latents.detach().clone(), "s": int(timestep)})
        return self.d * latents.flatten(1).mean(1)


def _example(seed: int, delta: float = 0.0, delta_previous: float = 0.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(SHAPE, generator=g)
    previous = torch.randn(SHAPE, generator=g)
    return {"latents": latents + delta, "previous": previous + delta_previous}


def _lcm_step(monkeypatch, stage: str, **config):
    monkeypatch.setattr(osa_module, "Conditioner", StubConditioner)
    monkeypatch.setattr(osa_module, "AvatarDiscriminator", StubDiscriminator)
    teacher = StubUNet(0.1)
    models = types.SimpleNamespace(denoising_unet=teacher, scheduler_config=dict(SD15_SCHEDULER))
    cfg = osa_module.LCMConfig(**config)
    return osa_module.LCMStep(models, torch.device("cpu"), torch.float32, cfg, stage, total_steps=10,
                              student=StubUNet(0.3))


def _pseudo_huber(a: torch.Tensor, b: torch.Tensor) -> float:
    d = (a - b).double().flatten()
    c = 0.00054 * math.sqrt(d.numel())
    return float(torch.sqrt((d ** 2).sum() + c * c) - c)


def _lcm_f(x: torch.Tensor, t: int, w: float) -> torch.Tensor:
    """OSA-LCM eq. 1 with the stub's eps = w x + A + R: f = c_skip x + c_out x0, LCM's scalings
    (sigma_data 0.5, timestep_scaling 10)."""
    a = AC[t]
    eps = w * x.double() + A + R
    x0 = (x.double() - math.sqrt(1 - a) * eps) / math.sqrt(a)
    scaled = 10.0 * t
    return 0.25 / (scaled ** 2 + 0.25) * x.double() + scaled / math.sqrt(scaled ** 2 + 0.25) * x0


def test_adv_lcm_generator_step_against_eqs_1_to_9(monkeypatch):
    step = _lcm_step(monkeypatch, "adv-lcm", skip=20, guidance=(6.5, 2.5))
    student, teacher, disc = step.student, step.teacher, step.discriminator
    example = _example(0)
    out = step.generator_step(student, example, torch.Generator().manual_seed(3), step=1)
    # the student: once at (x_t, t) with grad, once at (x_t', t - k) as its own stop-gradient target
    assert len(student.calls) == 2 and len(teacher.calls) == 1
    x_t, t = student.calls[0]["sample"].double(), student.calls[0]["t"]
    assert 20 <= t <= 999 and int(out["t"]) == t
    # eq. 2: the teacher's DDIM step from t to t - k with 3-way multi-CFG (cond, no audio, neither)
    call = teacher.calls[0]
    assert call["t"] == t and call["sample"].shape[0] == 3
    torch.testing.assert_close(call["sample"].double(), x_t.expand(3, -1, -1, -1, -1))
    torch.testing.assert_close(call["audio"], torch.tensor([A, 0.0, 0.0]))
    torch.testing.assert_close(call["ref"], torch.tensor([R, R, 0.0]))
    eps = 6.5 * A + 2.5 * R + 0.1 * x_t
    a, a_prev = AC[t], AC[t - 20]
    x0 = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
    x_prev = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    assert student.calls[1]["t"] == t - 20
    torch.testing.assert_close(student.calls[1]["sample"].double(), x_prev, rtol=1e-5, atol=1e-5)
    # eq. 3: the pseudo-Huber distance between f(x_t, t) and sg[f(x_t', t')]
    prediction = _lcm_f(x_t, t, 0.3)
    goal = _lcm_f(x_prev, t - 20, 0.3)
    assert float(out["distance"]) == pytest.approx(_pseudo_huber(prediction, goal), rel=1e-4)
    # eq. 5 (hinge): -D(q(f, s)), s ~ U{0..gen_noise_max}
    assert len(disc.calls) == 1 and 0 <= disc.calls[0]["s"] <= 100
    logits = 1.5 * disc.calls[0]["latents"].double().mean()
    assert float(out["adversarial"]) == pytest.approx(-float(logits), rel=1e-4, abs=1e-6)
    # eqs. 7-8: frame-to-frame changes of the prediction against the clip's
    target = example["latents"].double()
    motion = float(((prediction.diff(dim=2) - target.diff(dim=2)) ** 2).mean())
    assert float(out["motion"]) == pytest.approx(motion, rel=1e-4)
    # eq. 9 with lambda_adv 0.1, lambda_mot 1
    expected = _pseudo_huber(prediction, goal) - 0.1 * float(logits) + motion
    assert float(out["loss"].detach()) == pytest.approx(expected, rel=1e-4)
    assert out["loss"].requires_grad


def test_consistency_function_meets_the_boundary_condition(monkeypatch):
    """eq. 1 at small t, where c_skip matters: f(x, 0) = x exactly, f(x, 1) = c_skip x + c_out x0."""
    step = _lcm_step(monkeypatch, "adv-lcm")
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    cond = _conditions(A, R)
    torch.testing.assert_close(step._consistency(step.student, x, 0, cond).double(), x.double(), rtol=1e-5, atol=1e-5)
    for t in (1, 3):
        torch.testing.assert_close(step._consistency(step.student, x, t, cond).double(), _lcm_f(x, t, 0.3),
                                   rtol=1e-5, atol=1e-5)


def test_adv_lcm_noises_the_clip_to_t(monkeypatch):
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps: with the same draws, shifting x0 by delta shifts x_t
    by sqrt(a_t) delta."""
    step = _lcm_step(monkeypatch, "adv-lcm")
    step.generator_step(step.student, _example(0), torch.Generator().manual_seed(5), step=1)
    step.generator_step(step.student, _example(0, delta=1.0), torch.Generator().manual_seed(5), step=1)
    first, second = step.student.calls[0], step.student.calls[2]
    assert first["t"] == second["t"]
    shift = second["sample"].double() - first["sample"].double()
    torch.testing.assert_close(shift, torch.full_like(shift, math.sqrt(AC[first["t"]])), rtol=1e-5, atol=1e-5)


def test_eft_generator_step_noises_clip_n_and_targets_clip_n_plus_1(monkeypatch):
    step = _lcm_step(monkeypatch, "eft", eft_t_min=800)
    example = _example(1)
    out = step.generator_step(step.student, example, torch.Generator().manual_seed(7), step=1)
    assert step.teacher.calls == [] and len(step.student.calls) == 1  # no teacher, no target network
    x_t, t = step.student.calls[0]["sample"].double(), step.student.calls[0]["t"]
    assert 800 <= t <= 999
    prediction = _lcm_f(x_t, t, 0.3)
    target = example["latents"].double()                      # clip n + 1 (eq. 10)
    assert float(out["distance"]) == pytest.approx(_pseudo_huber(prediction, target), rel=1e-4)
    motion = float(((prediction.diff(dim=2) - target.diff(dim=2)) ** 2).mean())
    assert float(out["motion"]) == pytest.approx(motion, rel=1e-4)
    # the source is clip n ("previous"): shifting it by delta shifts x_t by sqrt(a_t) delta
    step.generator_step(step.student, _example(1, delta_previous=1.0), torch.Generator().manual_seed(7), step=1)
    shift = step.student.calls[1]["sample"].double() - x_t
    torch.testing.assert_close(shift, torch.full_like(shift, math.sqrt(AC[t])), rtol=1e-5, atol=1e-5)
    # eq. 10's high-noise range [eft_t_min, 999] over many draws (Adv-LCM's reaches below it)
    for stage, low in (("eft", 800), ("adv-lcm", 20)):
        runner = _lcm_step(monkeypatch, stage, eft_t_min=800, skip=20)
        for seed in range(40):
            runner.generator_step(runner.student, example, torch.Generator().manual_seed(seed), step=1)
        ts = [c["t"] for c in runner.student.calls if c["sample"].shape[0] == 1][:: 1 if stage == "eft" else 2]
        assert len(ts) == 40 and min(ts) >= low and max(ts) <= 999
        assert (min(ts) >= 800) == (stage == "eft")


def test_discriminator_step_sees_real_then_fake_at_the_progressive_noise_level(monkeypatch):
    step = _lcm_step(monkeypatch, "adv-lcm", disc_t_start=500, disc_t_end=100)
    assert [step.disc_noise_max(i) for i in (0, 5, 10, 20)] == [500, 300, 100, 100]  # eq. 6, 10 steps
    example = _example(2)
    out = step.discriminator_step(step.discriminator, example, torch.Generator().manual_seed(11), step=5)
    (call,) = step.discriminator.calls
    assert 0 <= call["s"] <= 300 and call["latents"].shape[0] == 2
    real, fake = 1.5 * call["latents"].double().flatten(1).mean(1)
    expected = max(0.0, 1 - float(real)) + max(0.0, 1 + float(fake))  # eq. 4, hinge
    assert float(out["disc_loss"]) == pytest.approx(expected, rel=1e-4)
    # real = the clip noised to s: shifting the clip by delta shifts it by sqrt(a_s) delta, the fake not
    step.discriminator_step(step.discriminator, _example(2, delta=1.0), torch.Generator().manual_seed(11), step=5)
    moved = step.discriminator.calls[1]["latents"].double() - call["latents"].double()
    s = call["s"]
    torch.testing.assert_close(moved[0], torch.full_like(moved[0], math.sqrt(AC[s])), rtol=1e-5, atol=1e-5)
    # the fake is the student's f(x_t, t) noised to s: its shift is sqrt(a_s) * d f / d x0 = sqrt(a_s a_t) * df/dx
    t = step.student.calls[-1]["t"]
    a_t = AC[t]
    scaled = 10.0 * t
    dfdx = 0.25 / (scaled ** 2 + 0.25) + scaled / math.sqrt(scaled ** 2 + 0.25) * (1 - math.sqrt(1 - a_t) * 0.3) \
        / math.sqrt(a_t)
    torch.testing.assert_close(moved[1], torch.full_like(moved[1], math.sqrt(AC[s]) * math.sqrt(a_t) * dfdx),
                               rtol=1e-4, atol=1e-5)


def test_fada_generator_step_against_eqs_2_to_8(monkeypatch):
    monkeypatch.setattr(fada_module, "Conditioner", StubConditioner)
    teacher = StubUNet(0.1)
    models = types.SimpleNamespace(denoising_unet=teacher, scheduler_config=dict(SD15_SCHEDULER))
    cfg = fada_module.FADAConfig(solver_steps=3)
    student = StubUNet(0.3, cfg_tokens=4)
    step = fada_module.FADAStep(models, torch.device("cpu"), torch.float32, cfg, student=student)
    example = _example(4)
    out = step.generator_step(student, example, torch.Generator().manual_seed(9), step=1)
    k = int(out["window"])
    assert 1 <= k <= 4
    t_s, t_e = k / 4, (k - 1) / 4
    index = lambda t: max(int(round(1000 * t)) - 1, 0)  # noqa: E731  alphas_cumprod at int(1000 t) - 1
    a_s, a_e = AC[index(t_s)], AC[index(t_e)]
    scales = (float(out["cfg_audio"]), float(out["cfg_ref"]))
    assert 4.5 <= scales[0] <= 8.5 and 1.5 <= scales[1] <= 3.0
    # eq. 2: the teacher's DDIM solver, 3 steps from index(t_s) to index(t_e), multi-CFG at the drawn scales
    points = [round(index(t_s) + (index(t_e) - index(t_s)) * i / 3) for i in range(4)]
    assert [c["t"] for c in teacher.calls] == points[:3]
    assert all(c["sample"].shape[0] == 3 for c in teacher.calls)
    z_s = teacher.calls[0]["sample"][:1].double()
    z0 = example["latents"].double()
    noise = (z_s - math.sqrt(a_s) * z0) / math.sqrt(1 - a_s)   # z_s = sqrt(a_s) z0 + sqrt(1 - a_s) eps
    assert 0.5 < float(noise.std()) < 1.6
    z = z_s
    for t, t_next in zip(points[:-1], points[1:]):
        eps = scales[0] * A + scales[1] * R + 0.1 * z
        x0 = (z - math.sqrt(1 - AC[t]) * eps) / math.sqrt(AC[t])
        z = math.sqrt(AC[t_next]) * x0 + math.sqrt(1 - AC[t_next]) * eps
    z_e = z
    z_e_gt = math.sqrt(a_e) * z0 + math.sqrt(1 - a_e) * noise   # sec. 3.2
    # eq. 3: both lines at the same t in (t_e, t_s]; one student call with both, the drawn scales (eq. 10)
    (call,) = student.calls
    assert call["sample"].shape[0] == 2 and tuple(call["scales"]) == pytest.approx(scales)
    u = float(((call["sample"][:1].double() - z_s) / (z_e - z_s)).mean())
    torch.testing.assert_close(call["sample"][:1].double(), z_s + u * (z_e - z_s), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(call["sample"][1:].double(), z_s + u * (z_e_gt - z_s), rtol=1e-4, atol=1e-5)
    assert 0 <= u < 1 and call["t"] == int((t_s - u * (t_s - t_e)) * 1000)
    # eq. 4: eps_hat = (z_e - lambda_s z_s) / eta_s; eqs. 5-8
    lam, eta = math.sqrt(a_e / a_s), math.sqrt(1 - a_e) - math.sqrt(a_e * (1 - a_s) / a_s)
    prediction = 0.3 * call["sample"].double() + A + R
    loss_teacher = float(((prediction[:1] - (z_e - lam * z_s) / eta) ** 2).mean())
    loss_gt = float(((prediction[1:] - (z_e_gt - lam * z_s) / eta) ** 2).mean())
    ratio = loss_gt / loss_teacher
    weight = 0.2 * (ratio ** 0.25 if ratio < 30 else 30 ** 0.25 * (100 - ratio) / 70 if ratio < 100 else 0.0)
    assert float(out["teacher_loss"]) == pytest.approx(loss_teacher, rel=1e-4)
    assert float(out["gt_loss"]) == pytest.approx(loss_gt, rel=1e-4)
    assert float(out["R"]) == pytest.approx(ratio, rel=1e-4) and float(out["W"]) == pytest.approx(weight, rel=1e-4)
    assert float(out["loss"].detach()) == pytest.approx(loss_teacher + weight * loss_gt, rel=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_teacher_step_regresses_the_noise_or_v_at_t(monkeypatch, prediction_type):
    """FADA eq. 1: ||eps_theta(x_t, t, c) - eps||^2 (or v = sqrt(a) eps - sqrt(1 - a) x0), x_t from
    the clip; with drop 0 the full conditions, with drop 1 the null ones (classifier-free training)."""
    import avatar_cli.training.teacher as teacher_module

    monkeypatch.setattr(teacher_module, "Conditioner", StubConditioner)
    for drop, audio, ref in ((0.0, A, R), (1.0, 0.0, 0.0)):
        unet = StubUNet(0.3)
        models = types.SimpleNamespace(denoising_unet=unet, settings=types.SimpleNamespace(default_method="teacher"),
                                       scheduler_config={**SD15_SCHEDULER, "prediction_type": prediction_type})
        step = teacher_module.TeacherStep(models, torch.device("cpu"), torch.float32, drop=drop)
        example = _example(6)
        out = step.generator_step(unet, example, torch.Generator().manual_seed(2), step=1)
        step.generator_step(unet, _example(6, delta=1.0), torch.Generator().manual_seed(2), step=1)
        first, second = unet.calls
        t = first["t"]
        a = AC[t]
        shift = second["sample"].double() - first["sample"].double()
        torch.testing.assert_close(shift, torch.full_like(shift, math.sqrt(a)), rtol=1e-5, atol=1e-5)
        assert float(first["audio"]) == pytest.approx(audio) and float(first["ref"]) == pytest.approx(ref)
        x_t, x0 = first["sample"].double(), example["latents"].double()
        noise = (x_t - math.sqrt(a) * x0) / math.sqrt(1 - a)
        target = noise if prediction_type == "epsilon" else math.sqrt(a) * noise - math.sqrt(1 - a) * x0
        prediction = 0.3 * x_t + audio + ref
        assert float(out["loss"].detach()) == pytest.approx(float(((prediction - target) ** 2).mean()), rel=1e-4)
