"""Multi-CFG (FADA eq. 9) and CFG tokens (FADA eq. 10)."""

import pytest
import torch

from avatar_cli.models.attention import ReferenceFeatures
from avatar_cli.models.bundle import AvatarModels
from avatar_cli.models.cfg_tokens import CFGTokens, cfg_embedding
from avatar_cli.models.denoising_unet import DenoisingUNet3D
from avatar_cli.models.presets import preset
from avatar_cli.models.reference_net import ReferenceNet
from avatar_cli.sampling.guidance import Conditions, GuidedDenoiser, cfg, multi_cfg


class StubUNet:
    """Returns a per-branch prediction that reveals which conditions it got."""

    def __init__(self):
        self.calls = []

    def __call__(self, latents, t, encoder_hidden_states, audio_embeds, reference_features, motion_features,
                 conditioning_features=None, region_masks=None, **kw):
        self.calls.append((latents.shape[0], kw))
        has_audio = audio_embeds.flatten(1).abs().sum(1) > 0                       # (B,)
        ref = reference_features["layer"].flatten(1).mean(1)                        # (B,)
        keep = getattr(reference_features, "keep", None)
        if keep is not None:
            ref = torch.where(keep, ref, torch.full_like(ref, 100.0))              # 100: "no reference"
        face = encoder_hidden_states.flatten(1).mean(1)                             # (B,)
        assert torch.equal(motion_features["layer"], torch.cat([torch.full((2, 3), 7.0)] * latents.shape[0]))
        return latents * 0 + (10.0 * has_audio + ref + 1000.0 * face)[:, None, None, None, None]


def _conditions(face=0.0):
    return Conditions(torch.full((1, 4, 8), face), torch.ones(1, 5, 4, 8), {"layer": torch.full((1, 3), 2.0)},
                      {"layer": torch.full((2, 3), 7.0)})


def _null(reference):
    return Conditions(torch.zeros(1, 4, 8), torch.zeros(1, 5, 4, 8), reference, {"layer": torch.full((2, 3), 7.0)})


def test_multi_cfg_is_equation_9_in_one_batch_of_three():
    unet = StubUNet()
    null = _null({"layer": torch.full((1, 3), -1.0)})  # reference features of a zero latent
    denoiser = GuidedDenoiser(unet, _conditions(), "multi-cfg", (6.5, 2.5), null)
    x = torch.zeros(1, 4, 5, 2, 2)
    eps = denoiser(x, 999)
    assert [c[0] for c in unet.calls] == [3] and denoiser.evaluations == 3   # one call, batch of 3
    eps_a, eps_r, eps_b = 12.0, 2.0, -1.0   # audio+ref, ref only (audio zeroed), neither (null reference)
    expected = 6.5 * (eps_a - eps_r) + 2.5 * (eps_r - eps_b) + eps_b
    assert torch.allclose(eps, torch.full_like(x, expected))
    assert torch.allclose(multi_cfg(torch.tensor(eps_a), torch.tensor(eps_r), torch.tensor(eps_b), 6.5, 2.5),
                          torch.tensor(expected))
    # cfg_a = cfg_r = 1: the conditional prediction
    plain = GuidedDenoiser(StubUNet(), _conditions(), "multi-cfg", (1.0, 1.0), null)(x, 999)
    assert torch.allclose(plain, torch.full_like(x, eps_a))
    # a model trained to drop the reference entirely (Hallo): the third branch has no reference
    no_ref = _null(ReferenceFeatures({"layer": torch.full((1, 3), 2.0)}, keep=torch.zeros(1, dtype=torch.bool)))
    eps = GuidedDenoiser(StubUNet(), _conditions(), "multi-cfg", (6.5, 2.5), no_ref)(x, 999)
    assert torch.allclose(eps, torch.full_like(x, 6.5 * (12 - 2) + 2.5 * (2 - 100) + 100))


def test_cfg_is_one_batch_of_two_with_the_null_branch_first():
    unet = StubUNet()
    null = _null(ReferenceFeatures({"layer": torch.full((1, 3), 2.0)}, keep=torch.zeros(1, dtype=torch.bool)))
    x = torch.zeros(1, 4, 5, 2, 2)
    eps = GuidedDenoiser(unet, _conditions(face=0.5), "cfg", (3.5,), null)(x, 10)
    assert [c[0] for c in unet.calls] == [2]
    eps_c, eps_u = 10 + 2 + 500.0, 100.0  # audio + reference + face tokens; nothing
    assert torch.allclose(eps, torch.full_like(x, eps_u + 3.5 * (eps_c - eps_u)))
    assert torch.allclose(cfg(torch.tensor(eps_u), torch.tensor(eps_c), 1.0), torch.tensor(eps_c))


def test_no_guidance_and_cfg_tokens_are_one_evaluation():
    unet = StubUNet()
    x = torch.zeros(1, 4, 5, 2, 2)
    GuidedDenoiser(unet, _conditions(), "none")(x, 10)
    GuidedDenoiser(unet, _conditions(), "cfg-tokens", (6.5, 2.0))(x, 10)
    assert [c[0] for c in unet.calls] == [1, 1]
    assert unet.calls[1][1]["guidance_scales"] == (6.5, 2.0) and "guidance_scales" not in unet.calls[0][1]
    with pytest.raises(ValueError, match="null conditions"):
        GuidedDenoiser(unet, _conditions(), "multi-cfg", (6.5, 2.5))
    with pytest.raises(ValueError, match="takes 1 guidance scale"):
        GuidedDenoiser(unet, _conditions(), "cfg", (6.5, 2.5), _null({"layer": torch.zeros(1, 3)}))


def test_cfg_embedding_is_equation_10():
    tokens = CFGTokens(4, 8)
    gamma_a, gamma_r, gamma_b = tokens.gammas.detach()
    emb = tokens(6.5, 2.0)
    expected = 6.5 * gamma_a - 6.5 * gamma_r + 2.0 * gamma_r - 2.0 * gamma_b + gamma_b
    torch.testing.assert_close(emb, expected)
    torch.testing.assert_close(cfg_embedding(gamma_a, gamma_r, gamma_b, 1.0, 1.0), gamma_a)
    torch.testing.assert_close(cfg_embedding(gamma_a, gamma_r, gamma_b, 0.0, 0.0), gamma_b)


def test_cfg_layers_are_added_only_explicitly_and_change_nothing_at_init(tmp_path):
    models = AvatarModels.from_preset("tiny")
    teacher = models.denoising_unet
    models.save_pretrained(tmp_path / "w")
    loaded = AvatarModels.from_pretrained(tmp_path / "w").denoising_unet
    assert loaded.config.cfg_tokens == 0 and not hasattr(loaded, "cfg_embedding")  # never silently added
    student = teacher.with_cfg_layers(4)
    added = {n for n, _ in student.named_parameters()} - {n for n, _ in teacher.named_parameters()}
    assert added and all(n.startswith("cfg_embedding.") or ".cfg_modules." in n for n in added)
    with pytest.raises(ValueError, match="already has"):
        student.with_cfg_layers(4)
    tokens = models.image_projector.null_tokens()
    torch.manual_seed(0)
    ref = models.reference_net.extract_features(torch.randn(1, 4, 8, 8), tokens)
    x, audio = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 3, 4, 32)
    with torch.no_grad():
        before = teacher(x, 999, tokens, audio, ref, None)
        after = student(x, 999, tokens, audio, ref, None, guidance_scales=(6.5, 2.0))
        skipped = student(x, 999, tokens, audio, ref, None)
    torch.testing.assert_close(after, skipped, rtol=0, atol=0)  # zero-initialised output projection
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    # once trained (here: perturbed), the scales matter
    for m in student.modules():
        if m.__class__.__name__ == "CFGAttentionBlock":
            torch.nn.init.normal_(m.attn.to_out[0].weight, std=0.1)
    with torch.no_grad():
        a = student(x, 999, tokens, audio, ref, None, guidance_scales=(6.5, 2.0))
        b = student(x, 999, tokens, audio, ref, None, guidance_scales=(1.0, 1.0))
    assert (a - b).abs().max() > 1e-4


def test_cfg_batch_keeps_each_branchs_per_level_region_masks():
    """Hallo's guided batch: the per-level masks of each branch go with that branch (a batch of 2
    equals the two branches run alone), and every level reaches the U-Net block of its size."""
    cfg_ = preset("tiny", "hallo")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        unet, net = DenoisingUNet3D(**cfg_["denoising_unet"]).eval(), ReferenceNet(**cfg_["reference_net"]).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the audio branches' zero convolutions start at zero: give them weights
        for name, p in unet.named_parameters():
            if "zero_conv" in name:
                p.normal_(0.0, 0.2, generator=gen)
    latents = torch.randn(1, 4, 3, 8, 8, generator=gen)
    tokens = torch.randn(1, 4, 32, generator=gen)

    def conditions(seed):
        g = torch.Generator().manual_seed(seed)
        masks = {r: tuple(torch.rand(1, 8 >> k, 8 >> k, generator=g) for k in range(4)) for r in ("full", "face", "lip")}
        return Conditions(tokens, torch.randn(1, 3, 4, 32, generator=g), net.extract_features(latents[:, :, 0], tokens),
                          None, torch.randn(1, 32, 3, 8, 8, generator=g), masks)

    cond, null = conditions(1), conditions(2)
    with torch.no_grad():
        guided = GuidedDenoiser(unet, cond, "cfg", (3.5,), null, region_scales=(1.0, 0.7, 1.3))(latents, 500)
        alone = [unet(latents, 500, **c.unet_kwargs(), region_scales=(1.0, 0.7, 1.3)) for c in (null, cond)]
        torch.testing.assert_close(guided, cfg(*alone, 3.5), rtol=1e-5, atol=1e-5)
        # the 4x4 level is what the mid block uses: changing it (and only it) changes the output
        changed = {r: (ms[0], ms[1] * 0, *ms[2:]) for r, ms in cond.region_masks.items()}
        other = unet(latents, 500, **{**cond.unet_kwargs(), "region_masks": changed})
        unused = {r: (ms[0], ms[1], ms[2] * 0, ms[3] * 0) for r, ms in cond.region_masks.items()}
        same = unet(latents, 500, **{**cond.unet_kwargs(), "region_masks": unused})
        base = unet(latents, 500, **cond.unet_kwargs())
    assert (other - base).abs().max() > 1e-6
    torch.testing.assert_close(same, base, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no full region mask of size \\(4, 4\\)"):
        unet(latents, 500, **{**cond.unet_kwargs(), "region_masks": {r: (ms[0],) for r, ms in cond.region_masks.items()}})
