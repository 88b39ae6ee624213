"""`avatar bench`: report consistency, FLOP counting, and that overlapping changes no output byte."""

import json

import pytest
import torch
import torch.nn.functional as F

from avatar_cli.bench import flop_counter_mode
from avatar_cli.cli import main
from avatar_cli.models.bundle import AvatarModels


def test_bench_json_is_consistent(capsys, monkeypatch):
    import dataclasses
    import time

    from avatar_cli.pipelines.unet import UNetPipeline

    render_job, walls = UNetPipeline.render_job, []

    def second_warm_run_slowed(self, job, on_progress=None):
        """The cold run, a warm run, then a warm run that reports 1000 s more (as on a busy machine)."""
        result = render_job(self, job, on_progress)
        walls.append(result.wall_s + (1000 if len(walls) == 2 else 0))
        return dataclasses.replace(result, wall_s=walls[-1])

    monkeypatch.setattr(UNetPipeline, "render_job", second_warm_run_slowed)
    args = ["bench", "--arch", "tiny", "--size", "64", "--seconds", "1.5", "--repeat", "2", "--json", "--quiet"]
    start = time.perf_counter()
    code = main(args)
    elapsed = time.perf_counter() - start
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("rtf", "first_frame_delay_s", "fps", "stages", "nfe", "tflop_per_video_s", "tflops_achieved",
                "peak_memory_bytes", "device", "dtype", "versions", "command", "cold_start_s", "wall_s",
                "sampling_per_nfe_s", "tflops_share_of_peak"):
        assert key in r, key
    assert set(r["stages"]) == {*UNetPipeline.stages, "other"}
    assert r["command"] == "avatar " + " ".join(args)
    # The report against clocks outside it: the cold start and the warm runs fit in the command's time,
    # no stage is counted twice (other >= 0), and the video is as long as the speech.
    assert r["cold_start_s"] + 2 * r["wall_s"]["min"] <= elapsed
    assert r["stages"]["other"]["min"] >= 0
    assert r["frames"] == round(1.5 * 25) and abs(r["video_s"] - r["frames"] / 25) < 1e-3
    assert r["video_fps"] == 25.0
    # The median is one run's (the slower of two), and fps and RTF follow from the same runs' wall times,
    # however far apart those are: here the runs differ by 1000 s.
    assert len(walls) == 3 and r["cold_render_s"] == pytest.approx(walls[0], abs=1e-4)
    assert r["wall_s"]["median"] == pytest.approx(walls[2], abs=1e-4)
    assert r["wall_s"]["min"] == pytest.approx(walls[1], abs=1e-4)
    assert r["fps"]["median"] == r["fps"]["min"] == pytest.approx(r["frames"] / walls[2], abs=1e-4)
    assert r["rtf"]["median"] == pytest.approx(walls[2] / r["video_s"], abs=1e-4)
    assert r["rtf"]["min"] == pytest.approx(walls[1] / r["video_s"], abs=1e-4)
    assert r["nfe"] == 1 and r["evaluations"] == 3 and r["peak_memory_bytes"] > 0
    # 3 evaluations per run: the median of the per-run ratios is the median sampling time / 3 (2 runs)
    assert r["sampling_per_nfe_s"]["median"] == pytest.approx(r["stages"]["sampling"]["median"] / 3, abs=2e-4)
    assert r["tflop_per_video_s"] > 0 and r["first_frame_delay_s"]["median"] > 0
    assert r["tflops_share_of_peak"] is None  # a CPU has no bf16 tensor-core peak to compare with
    assert r["versions"]["torch"] == torch.__version__


def test_bf16_peaks_and_peak_rss_reset():
    from avatar_cli.bench import bf16_peak_tflops, peak_rss_bytes, reset_peak_rss

    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("AMD EPYC 7B13 (2 threads)") is None
    if not reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs here")
    big = bytearray(300 * 2**20)  # touch 300 MiB, free it, reset: the peak drops back
    for i in range(0, len(big), 4096):
        big[i] = 1
    high = peak_rss_bytes()
    del big
    assert reset_peak_rss()
    assert peak_rss_bytes() < high - 200 * 2**20


def test_bench_taesd_reports_the_decoder_psnr(capsys, monkeypatch):
    from avatar_cli.pipelines.unet import UNetPipeline

    decode_latents, decoded = UNetPipeline.decode_latents, []

    def recording(self, latents, batch_size=4, decoder="vae"):
        pixels = decode_latents(self, latents, batch_size, decoder)
        decoded.append((decoder, latents.clone(), pixels.clone()))
        return pixels

    monkeypatch.setattr(UNetPipeline, "decode_latents", recording)
    code = main(["bench", "--arch", "tiny", "--size", "64", "--seconds", "0.64", "--repeat", "1", "--no-flops",
                 "--decoder", "taesd", "--json", "--quiet"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    # the PSNR comes last: TAESD and the VAE on the same latents of one clip; recompute it from their pixels
    (fast_name, fast_latents, fast), (full_name, full_latents, full) = decoded[-2:]
    assert (fast_name, full_name) == ("taesd", "vae") and torch.equal(fast_latents, full_latents)

    def eight_bit(pixels):  # [-1, 1] -> 0..255 as the video gets them
        return torch.clamp(torch.round((pixels.double() + 1) * 255 / 2), 0, 255)

    mse = ((eight_bit(fast) - eight_bit(full)) ** 2).flatten(1).mean(1)
    assert len(mse) == 16 and bool((mse > 0).all())  # one clip; the random decoders disagree on every frame
    expected = (20 * torch.log10(torch.tensor(255.0, dtype=torch.float64)) - 10 * torch.log10(mse)).mean().item()
    assert r["decoder"] == "taesd" and r["taesd_psnr_db"] == pytest.approx(expected, abs=0.005 + 1e-9)


def test_bench_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (the plot extra)")
    out = tmp_path / "bench.png"
    assert main(["bench", "--arch", "tiny", "--size", "64", "--seconds", "0.64", "--repeat", "1", "--no-flops",
                 "--model", "osa-lcm,fada", "--plot", str(out), "--quiet"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


def test_overlapped_encoding_changes_no_output_byte(tmp_path, test_data):
    args = ["render", str(test_data / "astronaut.png"), str(test_data / "speech_espeak.wav"),
            "--random-weights", "--arch", "tiny", "--size", "64", "--quiet", "--seed", "4"]
    assert main([*args, "-o", str(tmp_path / "a.mp4")]) == 0
    assert main([*args, "-o", str(tmp_path / "b.mp4"), "--no-overlap"]) == 0
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


@pytest.mark.parametrize("argv,words", [(["--model", "nope"], "choose from"), (["--repeat", "0"], "--repeat"),
                                        (["--size", "100"], "multiple of 64"), (["--decoder", "x"], "--decoder")])
def test_bench_bad_options(capsys, argv, words):
    assert main(["bench", "--arch", "tiny", *argv]) == 2
    assert words in capsys.readouterr().err


def test_bench_dtypes_interleave_and_report_what_each_network_ran_in(capsys, monkeypatch):
    """``--dtype auto,float32,bfloat16`` on Ditto: one pipeline per dtype, the warm runs interleaved (A B C A B C),
    one report per dtype whose ``precision`` is the format its networks really had when they rendered, and a
    comparison whose fps ratios follow from the reports. The render is a stand-in (a real Ditto render takes
    tens of seconds here); the pipelines, their precision policy and bench's bookkeeping are the real ones."""
    import types

    from avatar_cli import precision
    from avatar_cli.pipelines.ditto import DittoPipeline

    calls = []
    walls = {"auto": 1.0, "float32": 2.0, "bfloat16": 4.0}

    def fake_render(self, job, on_progress=None, progress=None):
        decoder_weight = next(p for p in self.models.decoder.parameters() if p.dim() == 4)
        received = {
            name: (next(getattr(self.models, name).parameters()).dtype, self.precision[name].autocast)
            for name in precision.NETWORKS["ditto"]}
        calls.append((id(self), received, decoder_weight.is_contiguous(memory_format=torch.channels_last)))
        order = list(dict.fromkeys(c[0] for c in calls))  # the cold renders come in --dtype's order
        requested = ["auto", "float32", "bfloat16"][order.index(id(self))]
        return types.SimpleNamespace(output=str(job.output), duration_s=0.4, frames=10, wall_s=walls[requested],
                                     stages={"motion": 0.1}, first_frame_delay_s=0.05, nfe=10, evaluations=10,
                                     precision=precision.describe(self.precision), renderer=None, compiled=[])

    monkeypatch.setattr(DittoPipeline, "render_job", fake_render)
    assert main(["bench", "--model", "ditto", "--random-weights", "--arch", "tiny", "--size", "64", "--seconds", "0.4",
                 "--repeat", "2", "--no-flops", "--device", "cpu", "--dtype", "auto,float32,bfloat16", "--json",
                 "--quiet"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4
    reports, comparison = lines[:3], lines[3]
    assert [r["dtype_requested"] for r in reports] == ["auto", "float32", "bfloat16"]
    # three pipelines, cold renders first, then the warm rounds interleaved
    pipes = list(dict.fromkeys(c[0] for c in calls))
    assert len(pipes) == 3 and [c[0] for c in calls] == pipes * 3
    cpu = torch.device("cpu")
    for k, (r, dtype) in enumerate(zip(reports, ["auto", "float32", "bfloat16"])):
        run_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        expected = precision.policy("ditto", cpu, run_dtype, dtype)  # on this machine: bf16 autocast or not
        assert r["precision"] == precision.describe(expected) and r["dtype"] == str(run_dtype).split(".")[1]
        for _, received, channels_last in calls[k::3]:  # what the networks had at each of this dtype's renders
            assert received == {n: (p.dtype, p.autocast) for n, p in expected.items()}
            assert channels_last == expected["decoder"].channels_last
        assert r["fps"]["median"] == pytest.approx(10 / walls[dtype], abs=1e-4)
    assert reports[1]["precision"] == {n: "float32" for n in precision.NETWORKS["ditto"]}
    assert reports[2]["precision"]["decoder"] == "bfloat16" and reports[2]["precision"]["dit"] == "float32"
    assert comparison["compare"] == "dtype" and comparison["baseline"] == "auto"
    assert [row["dtype"] for row in comparison["dtypes"]] == ["auto", "float32", "bfloat16"]
    for row, r in zip(comparison["dtypes"], reports):
        assert row["fps"] == r["fps"]["median"] and row["precision"] == r["precision"]
        assert row["fps_ratio"] == pytest.approx(r["fps"]["median"] / reports[0]["fps"]["median"], abs=1e-4)
    assert [row["fps_ratio"] for row in comparison["dtypes"]] == [1.0, 0.5, 0.25]
    assert comparison["dtypes"][1]["first_speedup"] == 2.0  # auto renders 2x the frames per second of float32


@pytest.mark.parametrize("argv,words", [(["--dtype", "auto,fp8"], "--dtype fp8: choose from"),
                                        (["--dtype", "auto,auto"], "listed twice"),
                                        (["--dtype", "auto,float32", "--stream"], "one --dtype")])
def test_bench_bad_dtype_lists(capsys, argv, words):
    assert main(["bench", "--arch", "tiny", *argv]) == 2
    assert words in capsys.readouterr().err
