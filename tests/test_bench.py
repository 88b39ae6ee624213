"""`avatar bench`: report consistency, FLOP counting, and that overlapping changes no output byte."""

import json

import pytest
import torch
import torch.nn.functional as F

from avatar_cli.bench import flop_counter_mode
from avatar_cli.cli import main
from avatar_cli.models.bundle import AvatarModels
from avatar_cli.pipeline import STAGES


def test_bench_json_is_consistent(capsys):
    code = main(["bench", "--arch", "tiny", "--size", "64", "--seconds", "1.5", "--repeat", "1", "--json", "--quiet"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("rtf", "first_frame_delay_s", "fps_rendered", "stages", "nfe", "tflop_per_video_s", "tflops_achieved",
                "peak_memory_bytes", "device", "dtype", "versions", "command", "cold_start_s", "wall_s"):
        assert key in r, key
    assert set(r["stages"]) == {*STAGES, "other"}
    wall = r["wall_s"]["median"]
    total = sum(v["median"] for v in r["stages"].values())
    assert abs(total - wall) <= 0.01 * wall                      # stages + other = wall
    assert abs(r["rtf"]["median"] - wall / r["video_s"]) <= 1e-3  # rtf = wall / video seconds
    assert r["frames"] == round(1.5 * 25) + 1 or r["frames"] == int(1.5 * 25 + 0.5)
    assert r["nfe"] == 1 and r["unet_evaluations"] == 3 and r["peak_memory_bytes"] > 0
    assert r["tflop_per_video_s"] > 0 and r["first_frame_delay_s"]["median"] > 0
    assert r["versions"]["torch"] == torch.__version__


def test_unet_flops_equal_a_count_made_from_the_layers(monkeypatch):
    models = AvatarModels.from_preset("tiny")
    unet, net = models.denoising_unet, models.reference_net
    tokens = models.image_projector.null_tokens()
    with torch.no_grad():
        ref = net.extract_features(torch.randn(1, 4, 8, 8), tokens)
        mot = net.extract_features(torch.randn(4, 4, 8, 8), tokens)
    x, audio = torch.randn(1, 4, 16, 8, 8), torch.randn(1, 16, 4, 32)
    # another way: 2 x multiply-adds of every convolution and linear layer, 4 B H L S D per attention
    counted = {"flops": 0}

    def conv_hook(module, inputs, output):
        counted["flops"] += 2 * output.numel() * (module.in_channels // module.groups) * \
            module.kernel_size[0] * module.kernel_size[1]

    def linear_hook(module, inputs, output):
        counted["flops"] += 2 * output.numel() * module.in_features

    handles = []
    for m in unet.modules():
        if isinstance(m, torch.nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(q, k, v, *args, **kwargs):
        b, h, length, d = q.shape
        counted["flops"] += 2 * b * h * length * k.shape[-2] * d + 2 * b * h * length * k.shape[-2] * v.shape[-1]
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    with torch.no_grad():
        unet(x, 999, tokens, audio, ref, mot)
    for h in handles:
        h.remove()
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    counter = flop_counter_mode()
    with counter, torch.no_grad():
        unet(x, 999, tokens, audio, ref, mot)
    assert counter.get_total_flops() == counted["flops"] > 0


def test_overlapped_encoding_changes_no_output_byte(tmp_path, shared_data):
    args = ["render", str(shared_data / "astronaut.png"), str(shared_data / "speech_espeak.wav"),
            "--random-weights", "--arch", "tiny", "--size", "64", "--quiet", "--seed", "4"]
    assert main([*args, "-o", str(tmp_path / "a.mp4")]) == 0
    assert main([*args, "-o", str(tmp_path / "b.mp4"), "--no-overlap"]) == 0
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


@pytest.mark.parametrize("argv,words", [(["--model", "nope"], "choose from"), (["--repeat", "0"], "--repeat"),
                                        (["--size", "100"], "multiple of 64"), (["--decoder", "x"], "--decoder")])
def test_bench_bad_options(capsys, argv, words):
    assert main(["bench", "--arch", "tiny", *argv]) == 2
    assert words in capsys.readouterr().err
