"""Reference attention, audio attention and motion-frame temporal attention against direct
computations with the libraries' own modules."""

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from avatar_cli.models.attention import ReferenceAttnProcessor
from avatar_cli.models.audio_attention import AudioAttentionBlock
from avatar_cli.models.bundle import AvatarModels


def test_reference_attention_equals_attention_over_concatenated_tokens():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8)
    frames, tokens = 3, 10
    x = torch.randn(2 * frames, tokens, 32)       # 2 videos x 3 frames
    ref = torch.randn(2, 7, 32)                   # each video's reference tokens
    attn.set_processor(ReferenceAttnProcessor("layer.attn1", is_self_attention=True))
    ours = attn(x, reference_features={"layer.attn1": ref})
    # another way: plain diffusers attention with keys/values = [own tokens, that video's reference tokens]
    attn.set_processor(AttnProcessor2_0())
    context = torch.cat([x, ref.repeat_interleave(frames, dim=0)], dim=1)
    expected = attn(x, encoder_hidden_states=context)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    # no reference features: plain self-attention (the null condition)
    attn.set_processor(ReferenceAttnProcessor("layer.attn1", is_self_attention=True))
    plain = attn(x, reference_features=None)
    attn.set_processor(AttnProcessor2_0())
    torch.testing.assert_close(plain, attn(x), rtol=1e-5, atol=1e-5)


def test_reference_rows_without_reference_are_plain_self_attention():
    from avatar_cli.models.attention import ReferenceFeatures

    torch.manual_seed(1)
    attn = Attention(query_dim=32, heads=4, dim_head=8)
    x = torch.randn(2 * 3, 10, 32)
    ref = torch.randn(2, 7, 32)
    attn.set_processor(ReferenceAttnProcessor("l.attn1", is_self_attention=True))
    keep = torch.tensor([True, False])
    mixed = attn(x, reference_features=ReferenceFeatures({"l.attn1": ref}, keep))
    with_ref = attn(x, reference_features={"l.attn1": ref})
    plain = attn(x, reference_features=None)
    torch.testing.assert_close(mixed[:3], with_ref[:3], rtol=1e-5, atol=1e-5)   # video 0 keeps its reference
    torch.testing.assert_close(mixed[3:], plain[3:], rtol=1e-5, atol=1e-5)      # video 1 has none


def test_audio_block_with_full_masks_is_the_sum_of_three_cross_attentions():
    torch.manual_seed(0)
    block = AudioAttentionBlock(channels=16, inner_dim=8, num_heads=2, audio_dim=12, norm_num_groups=4)
    inner = block.transformer_blocks[0]
    for conv in inner.zero_conv.values():  # zero-initialised: give them weights to see anything
        torch.nn.init.normal_(conv.weight, std=0.2)
        torch.nn.init.normal_(conv.bias, std=0.2)
    x = torch.randn(3, 16, 4, 4)
    audio = torch.randn(3, 5, 12)
    masks = {r: torch.ones(3, 16) for r in ("full", "face", "lip")}
    out_masked = block(x, audio, masks, (1.0, 0.5, 2.0))
    out_none = block(x, audio, None, (1.0, 0.5, 2.0))
    torch.testing.assert_close(out_masked, out_none)
    # direct computation
    h = block.proj_in(block.norm(x)).permute(0, 2, 3, 1).reshape(3, 16, 8)
    h = h + inner.attn1(inner.norm1(h))
    n = inner.norm2(h)
    for region, scale in zip(("full", "face", "lip"), (1.0, 0.5, 2.0)):
        a = inner.audio_attn[region](n, encoder_hidden_states=audio)
        a = torch.einsum("ntc,dc->ntd", a, inner.zero_conv[region].weight[:, :, 0, 0]) + inner.zero_conv[region].bias
        h = h + scale * a
    h = h + inner.ff(inner.norm3(h))
    expected = block.proj_out(h.reshape(3, 4, 4, 8).permute(0, 3, 1, 2)) + x
    torch.testing.assert_close(out_none, expected, rtol=1e-5, atol=1e-5)
    # a zero face mask removes the face branch's attention (its conv bias remains, as in Hallo)
    masks["face"] = torch.zeros(3, 16)
    assert not torch.allclose(block(x, audio, masks, (1.0, 0.5, 2.0)), out_none)


def test_motion_frames_are_prepended_for_temporal_attention_only():
    models = AvatarModels.from_preset("tiny")
    unet = models.denoising_unet
    module = unet.down_blocks[0].motion_modules[0]
    torch.manual_seed(0)
    frames, m, c, h, w = 5, 2, 32, 4, 4
    x = torch.randn(frames, c, h, w)
    motion_tokens = torch.randn(m, h * w, c)
    from avatar_cli.models.denoising_unet import _Step

    step = _Step(unet, frames, None, None, None, None, None, (1.0, 1.0, 1.0), (h, w))
    ours = step.temporal(module, x, motion_tokens)
    motion_maps = motion_tokens.reshape(m, h, w, c).permute(0, 3, 1, 2)
    expected = module(torch.cat([motion_maps, x]), num_frames=m + frames)[m:]
    torch.testing.assert_close(ours, expected)
    assert not torch.allclose(ours, step.temporal(module, x, None))


def test_denoising_output_depends_on_reference_audio_and_motion():
    models = AvatarModels.from_preset("tiny")
    unet, net = models.denoising_unet, models.reference_net
    for conv in (m for n, m in unet.named_modules() if n.endswith("zero_conv.full")):
        torch.nn.init.normal_(conv.weight, std=0.1)  # let audio through (zero-init at random weights)
    torch.manual_seed(1)
    tokens = models.image_projector.null_tokens()
    ref = net.extract_features(torch.randn(1, 4, 8, 8), tokens)
    mot = net.extract_features(torch.randn(4, 4, 8, 8), tokens)
    x, audio = torch.randn(1, 4, 6, 8, 8), torch.randn(1, 6, 4, 32)
    base = unet(x, 500, tokens, audio, ref, mot)
    other_ref = net.extract_features(torch.randn(1, 4, 8, 8), tokens)
    for changed in (unet(x, 500, tokens, audio, other_ref, mot), unet(x, 500, tokens, audio, ref, None),
                    unet(x, 500, tokens, torch.randn_like(audio), ref, mot), unet(x, 100, tokens, audio, ref, mot)):
        assert (changed - base).abs().max() > 1e-4
