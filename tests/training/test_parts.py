"""The training's building blocks: the avatar discriminator, clip sampling (EFT pairs), FADA's
targets against the PeRFlow sampler, and the noise-schedule conversions."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from avatar_cli.models.bundle import AvatarModels
from avatar_cli.sampling.guidance import Conditions
from avatar_cli.sampling.perflow import PeRFlowScheduler
from avatar_cli.training.conditioning import Conditioner, NoiseSchedule
from avatar_cli.training.data import EDGE_MARGIN, ClipDataset
from avatar_cli.training.discriminator import AvatarDiscriminator
from avatar_cli.training.fada import FADAConfig, FADAStep


@pytest.fixture(scope="module")
def tiny_models():
    return AvatarModels.from_preset("tiny", seed=3)


def _example(frames=4, motion=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"latents": torch.randn(1, 4, frames, 8, 8, generator=g),
            "audio": torch.randn(1, frames, 5, 2, 32, generator=g),
            "reference": torch.randn(1, 4, 8, 8, generator=g),
            "motion": torch.randn(motion, 4, 8, 8, generator=g)}


def test_discriminator_averages_heads_over_teacher_temporal_features(tiny_models):
    teacher = tiny_models.denoising_unet
    disc = AvatarDiscriminator(teacher, hidden=8)
    # down blocks with attention + the mid block; its only parameters are the heads
    assert disc.names == ["down_blocks.0.motion_modules.0", "mid_block.motion_modules.0"]
    assert all(k.startswith("heads.") for k in disc.state_dict())
    cond = Conditioner(tiny_models, torch.device("cpu"), torch.float32)(_example())
    x = torch.randn(2, 4, 4, 8, 8, requires_grad=True)
    both = Conditions.cat([cond, cond])
    logits = disc(x, 300, **both.unet_kwargs())
    assert logits.shape == (2,)
    # the same average computed another way: hook the features, run each head by hand
    feats = {}
    hooks = [teacher.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: feats.__setitem__(n, o))
             for n in disc.names]
    with torch.no_grad():
        teacher(x.detach(), 300, **both.unet_kwargs())
    for h in hooks:
        h.remove()
    manual = []
    for name in disc.names:
        f = feats[name]                      # (B * (M + F), C, h, w): motion frames + clip frames
        f = f.reshape(2, f.shape[0] // 2, *f.shape[1:]).permute(0, 2, 1, 3, 4)
        manual.append(disc.heads[name.replace(".", "_")].net(f).mean(dim=(1, 2, 3, 4)))
    torch.testing.assert_close(logits, torch.stack(manual).mean(0), rtol=1e-5, atol=1e-6)
    # gradients reach the input (for the generator) and the heads, never the frozen teacher
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in disc.heads.parameters())


def _dataset(tmp_path, frames=30, clip=8):
    """One video whose latent frame i is filled with the value i (so positions can be read back)."""
    latents = torch.arange(frames, dtype=torch.float32)[:, None, None, None].expand(frames, 4, 2, 2).contiguous()
    audio = torch.arange(frames, dtype=torch.float32)[:, None, None].expand(frames, 2, 3).contiguous()
    (tmp_path / "shards").mkdir()
    save_file({"latents": latents.half(), "audio": audio.half()}, tmp_path / "shards" / "v.safetensors")
    entry = {"id": "v", "source": "v.mp4", "frames": frames, "quality": "high", "fps": 25, "size": 16,
             "shard": "shards/v.safetensors", "audio_model": "x"}
    (tmp_path / "index.jsonl").write_text(json.dumps(entry) + "\n")
    return tmp_path


def test_eft_pairs_clip_n_to_clip_n_plus_1_with_margin_and_reference_fill(tmp_path):
    root = _dataset(tmp_path)
    clip, motion = 8, 4
    data = ClipDataset(root, clip, motion, pairs=True)
    starts, filled = set(), 0
    for seed in range(200):
        ex = data.sample(torch.Generator().manual_seed(seed))
        target = ex["latents"][0, 0, :, 0, 0]               # frame values of clip n+1
        start = int(target[0])
        starts.add(start)
        assert start >= EDGE_MARGIN                          # the first 7 frames never start a sample
        assert target.tolist() == list(range(start, start + clip))
        reference = float(ex["reference"][0, 0, 0, 0])
        previous = ex["previous"][0, 0, :, 0, 0].tolist()     # clip n: the F frames before, reference in front
        expected = [float(i) if i >= 0 else reference for i in range(start - clip, start)]
        assert previous == expected
        filled += start < clip
        assert ex["motion"][:, 0, 0, 0].tolist() == previous[-motion:]   # clip n's last M frames
        # audio windows follow the target clip (5 frames centred on each, edge-clamped)
        assert ex["audio"][0, :, 2, 0, 0].tolist() == list(map(float, range(start, start + clip)))
    assert min(starts) == EDGE_MARGIN and max(starts) == 30 - clip
    assert filled > 0


def test_plain_clips_take_motion_frames_before_the_clip(tmp_path):
    data = ClipDataset(_dataset(tmp_path), 8, 4)
    ex = data.sample(torch.Generator().manual_seed(1))
    start = int(ex["latents"][0, 0, 0, 0, 0])
    assert ex["motion"][:, 0, 0, 0].tolist() == list(map(float, range(start - 4, start)))
    assert "previous" not in ex


def test_fada_target_is_the_line_the_perflow_sampler_walks(tiny_models):
    """eps* of FADA eq. 4, fed to the PeRFlow scheduler at points of the window, lands on z_e."""
    step = FADAStep(tiny_models, torch.device("cpu"), torch.float32, FADAConfig(cfg_tokens=2))
    scheduler = PeRFlowScheduler()
    scheduler.set_timesteps(window_steps=[2, 2, 1, 1])
    t_s, t_e, lambda_s, eta_s = step.window(4)               # the window [1, 0.75]
    assert (t_s, t_e) == (1.0, 0.75)
    g = torch.Generator().manual_seed(0)
    z_s, z_e = torch.randn(1, 4, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(1, 4, 2, 4, 4, generator=g,
                                                                                         dtype=torch.float64)
    eps = (z_e - lambda_s * z_s) / eta_s
    out = scheduler.step(eps, 1000, z_s)                     # point t = 1 (u = 0)
    torch.testing.assert_close(out.pred_window_end, z_e, rtol=1e-5, atol=1e-6)  # float32 vs float64 alphas
    torch.testing.assert_close(out.prev_sample, z_s + 0.5 * (z_e - z_s), rtol=1e-5, atol=1e-6)  # eq. 3's z_t, t = 0.875
    out = scheduler.step(eps, 875, out.prev_sample)
    torch.testing.assert_close(out.prev_sample, z_e, rtol=1e-5, atol=1e-6)


def test_noise_schedule_conversions_invert_the_forward_process():
    x0, eps = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    for kind in ("epsilon", "v_prediction"):
        schedule = NoiseSchedule({"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                  "beta_schedule": "scaled_linear", "prediction_type": kind})
        t = 600
        xt = schedule.add_noise(x0, eps, t)
        a = float(schedule.alphas[t])
        output = eps if kind == "epsilon" else a ** 0.5 * eps - (1 - a) ** 0.5 * x0
        got_eps, got_x0 = schedule.to_eps_x0(output, xt, t)
        torch.testing.assert_close(got_eps, eps, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_x0, x0, rtol=1e-4, atol=1e-4)
        # DDIM to t' = 400 with the true (eps, x0) equals the forward process at 400
        torch.testing.assert_close(schedule.ddim(xt, got_eps, got_x0, 400), schedule.add_noise(x0, eps, 400),
                                   rtol=1e-4, atol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_models):
    """``enable_gradient_checkpointing`` recomputes each U-Net layer in the backward pass: same
    loss, same gradients, less memory."""
    from avatar_cli.training.conditioning import float32_copy

    cond = Conditioner(tiny_models, torch.device("cpu"), torch.float32)(_example())
    x = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    grads = []
    for checkpointing in (False, True):
        unet = float32_copy(tiny_models.denoising_unet).train().requires_grad_(True)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        loss = (unet(x, 400, **cond.unet_kwargs()) ** 2).mean()
        loss.backward()
        grads.append((float(loss.detach()), {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}))
    (loss_a, a), (loss_b, b) = grads
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert a.keys() == b.keys() and len(a) > 100
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)


def test_eft_noises_clip_n_and_targets_clip_n_plus_1(tiny_models):
    """EFT (OSA-LCM eqs. 10-12): the student's input is clip n noised to t in [eft_t_min, 999],
    the target clip n+1; Adv-LCM noises the target clip itself."""
    from avatar_cli.training.osa_lcm import LCMConfig, LCMStep

    example = _example(frames=4)
    example["previous"] = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    step = LCMStep(tiny_models, torch.device("cpu"), torch.float32, LCMConfig(eft_t_min=800), "eft", 10)
    xt, t, target, _ = step._source(example, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # the same draws, in the same order: noise, then t
    noise = torch.randn(example["latents"].shape, generator=g)
    expected_t = int(torch.randint(800, 1000, (1,), generator=g))
    assert t == expected_t and 800 <= t <= 999
    torch.testing.assert_close(target, example["latents"])
    torch.testing.assert_close(xt, step.schedule.add_noise(example["previous"], noise, t))
    adv = LCMStep(tiny_models, torch.device("cpu"), torch.float32, LCMConfig(), "adv-lcm", 10)
    xt, t, target, _ = adv._source(example, torch.Generator().manual_seed(0))
    torch.testing.assert_close(xt, adv.schedule.add_noise(example["latents"], noise, t))
