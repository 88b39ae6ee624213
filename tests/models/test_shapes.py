"""Shapes of every model output (tiny config on the CPU, full config on the meta device) and the
full config's parameter counts against the libraries' own SD1.5 / AnimateDiff models."""

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel

from avatar_cli.models.bundle import AvatarModels
from avatar_cli.models.presets import preset


@pytest.fixture(scope="module")
def full_meta():
    return AvatarModels.from_preset("full", device="meta")


@pytest.fixture(scope="module")
def tiny():
    return AvatarModels.from_preset("tiny")


def _shapes(models, device, size, frames=16, motion=4):
    cfg = models.denoising_unet.config
    latent = size // 8
    with torch.device(device):
        pixels = torch.rand(1, 3, size, size) * 2 - 1
        z = models.vae.encode(pixels).latent_dist.mean
        tokens = models.image_projector.null_tokens(1)
        ref = models.reference_net.extract_features(z, tokens)
        mot = models.reference_net.extract_features(torch.zeros(motion, 4, latent, latent), tokens)
        windows = torch.randn(frames, 5, models.audio_projector.config.num_layers,
                              models.audio_projector.config.hidden_size)
        audio = models.audio_projector(windows)[None]
        out = models.denoising_unet(torch.randn(1, 4, frames, latent, latent), 999, tokens, audio, ref, mot)
        decoded = models.vae.decode(torch.randn(2, 4, latent, latent)).sample
        speech = models.audio_encoder(torch.zeros(1, 16000), output_hidden_states=True).hidden_states  # 1 s
    return {"z": z.shape, "tokens": tokens.shape, "ref": ref, "mot": mot, "audio": audio.shape, "out": out.shape,
            "decoded": decoded.shape, "cfg": cfg, "speech": [h.shape for h in speech]}


@pytest.mark.parametrize("arch,device,size", [("tiny", "cpu", 64), ("full", "meta", 512)])
def test_module_output_shapes(arch, device, size, request):
    models = request.getfixturevalue("full_meta" if arch == "full" else "tiny")
    cfg = preset(arch)
    s = _shapes(models, device, size)
    latent = size // 8
    cross = cfg["denoising_unet"]["cross_attention_dim"]
    assert s["z"] == (1, 4, latent, latent)
    assert s["tokens"] == (1, cfg["image_projector"]["tokens"], cross)
    assert s["audio"] == (1, 16, cfg["audio_projector"]["context_tokens"], cfg["audio_projector"]["output_dim"])
    assert s["out"] == (1, 4, 16, latent, latent)
    assert s["decoded"] == (2, 3, size, size)
    # wav2vec2: 1 s at 16 kHz -> 49 conv frames (20 ms hop); embeddings + every hidden layer
    encoder = cfg["audio_encoder"]
    assert s["speech"] == [(1, 49, encoder["hidden_size"])] * (encoder["num_hidden_layers"] + 1)
    if arch == "full":
        assert len(s["speech"]) == 13 and s["speech"][0][-1] == 768  # wav2vec2-base: 12 layers x 768
    # one recorded feature map per spatial self-attention, at that layer's resolution and width
    down = [n for n in s["ref"] if n.startswith("down_blocks")]
    n_attn = 2 * cfg["reference_net"]["layers_per_block"] + 1  # down + up(+1) per cross-attn level, mid
    assert len(s["ref"]) == sum(1 for t in cfg["reference_net"]["down_block_types"] if "CrossAttn" in t) * n_attn + 1
    assert down and all(n.endswith("attn1") for n in s["ref"])
    for name, feat in s["ref"].items():
        level = int(name.split(".")[1]) if name.startswith("down") else None
        if level is not None:
            assert feat.shape == (1, (latent >> level) ** 2, cfg["reference_net"]["block_out_channels"][level])
        assert s["mot"][name].shape == (4, *feat.shape[1:])


def test_full_parameter_counts_match_sd15_and_animatediff(full_meta):
    with torch.device("meta"):
        sd15 = UNet2DConditionModel(**preset("full")["reference_net"])
        adapter = MotionAdapter(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,
                                motion_num_attention_heads=8, motion_max_seq_length=32, use_motion_mid_block=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(sd15) == 859_520_964
    assert count(full_meta.reference_net) == 859_520_964
    unet = full_meta.denoising_unet
    by_part = {"2d": 0, "motion": 0, "audio": 0}
    for name, p in unet.named_parameters():
        part = "motion" if ".motion_modules." in name else "audio" if ".audio_modules." in name else "2d"
        by_part[part] += p.numel()
    assert by_part["2d"] == 859_520_964
    sd_names = {n for n, _ in sd15.named_parameters()}
    assert {n for n, _ in unet.named_parameters() if ".motion_modules." not in n and ".audio_modules." not in n} == sd_names
    assert by_part["motion"] == count(adapter)  # AnimateDiff mm_sd_v15_v2 layout
    # Hallo's released denoising U-Net has 1,525,528,324 parameters: the same architecture.
    assert count(unet) == 1_525_528_324
    assert count(full_meta.audio_projector) == 36_465_152
    assert count(full_meta.image_projector) == 1_577_472
