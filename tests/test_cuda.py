"""The CUDA paths: bfloat16 by default, channels_last networks, torch.compile, and `avatar bench`'s GPU
keys. Marked ``cuda``: they run where torch sees a CUDA GPU and skip elsewhere (``-m "not cuda"``
leaves them out). The noise comes from a generator on the render device, so a GPU render is
compared with another render on the same GPU, or a network's output with the CPU's on equal inputs."""

import json

import numpy as np
import pytest
import torch

from avatar_cli import UNetPipeline, RenderOptions
from avatar_cli.bench import bf16_peak_tflops
from avatar_cli.cli import main
from avatar_cli.media.image import load_portrait
from avatar_cli.models.bundle import AvatarModels
from avatar_cli.pipelines.unet import resolve_dtype

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")]


def _render(test_data, device: str, dtype: torch.dtype, compile: bool = False):
    """A tiny random-weight pipeline and the 15 frames (one clip) it renders of the test portrait."""
    pipe = UNetPipeline(AvatarModels.from_preset("tiny", seed=2), device, dtype, compile=compile)
    image = load_portrait(test_data / "astronaut.png", 64)
    waveform = (0.1 * np.random.default_rng(0).standard_normal(9600)).astype(np.float32)
    frames = np.concatenate(list(pipe.generate(image, waveform, RenderOptions(size=64, seed=4))))
    assert frames.shape == (15, 64, 64, 3)
    return pipe, frames.astype(int)


def test_auto_dtype_is_bf16_and_the_networks_are_channels_last(test_data):
    dtype = resolve_dtype("auto", torch.device("cuda"))
    assert dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    pipe, low = _render(test_data, "cuda", dtype)
    models = pipe.models
    for net in (models.vae, models.reference_net, models.denoising_unet):
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
        assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
        assert {(p.device.type, p.dtype) for p in net.parameters()} == {("cuda", dtype)}
    _, full = _render(test_data, "cuda", torch.float32)
    # bf16 networks (the sampler's arithmetic stays float32) against float32 on the same GPU and noise:
    # the same picture, off by a grey level here and there where bf16's 8-bit mantissa rounds (on the
    # CPU, bf16 against float32: mean 0.3, frame means within 0.03; the frames' spread is ~40 levels)
    assert np.abs(low - full).mean() < 2 and np.abs(low.mean((1, 2, 3)) - full.mean((1, 2, 3))).max() < 1.5


@pytest.fixture
def no_tf32():
    """Full float32 convolutions and matmuls on the GPU (cuDNN uses TF32 by default)."""
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


def test_channels_last_unet_on_the_gpu_matches_the_cpu(no_tf32):
    cpu = AvatarModels.from_preset("tiny", seed=3)
    gpu = UNetPipeline(AvatarModels.from_preset("tiny", seed=3), "cuda", torch.float32).models
    assert gpu.denoising_unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 8, 8, generator=generator)
    audio = torch.randn(1, 16, 4, 32, generator=generator)
    ref_in, mot_in = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(4, 4, 8, 8, generator=generator)
    outs = []
    for models, device in ((cpu, "cpu"), (gpu, "cuda")):
        tokens = models.image_projector.null_tokens()
        with torch.no_grad():
            ref = models.reference_net.extract_features(ref_in.to(device), tokens)
            mot = models.reference_net.extract_features(mot_in.to(device), tokens)
            outs.append(models.denoising_unet(x.to(device), 500, tokens, audio.to(device), ref, mot).cpu())
    assert (outs[1] - outs[0]).norm() <= 1e-4 * outs[0].norm()


def test_compile_on_the_gpu_gives_the_same_frames(test_data):
    _, eager = _render(test_data, "cuda", torch.float32)
    _, compiled = _render(test_data, "cuda", torch.float32, compile=True)
    assert np.abs(compiled - eager).max() <= 2  # fused kernels round differently, never visibly


def test_bench_on_the_gpu_reports_its_keys(capsys):
    torch.cuda.reset_peak_memory_stats()
    assert main(["bench", "--arch", "tiny", "--size", "64", "--seconds", "0.64", "--repeat", "1", "--device", "cuda",
                 "--json", "--quiet"]) == 0
    r = json.loads(capsys.readouterr().out)
    name = torch.cuda.get_device_name()
    assert r["device"] == name and r["dtype"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    # CUDA's peak allocation, reset per method: at least the weights in their dtype, at most this process's peak
    weights = 2 * sum(AvatarModels.from_preset("tiny").parameter_counts().values())  # 2 bytes each
    assert r["peak_memory_scope"] == "method"
    assert weights <= r["peak_memory_bytes"] <= torch.cuda.max_memory_allocated()
    peak = bf16_peak_tflops(name)
    assert r["bf16_peak_tflops"] == peak and r["tflop_per_video_s"] > 0 and r["tflops_achieved"] > 0
    if peak is None:
        assert r["tflops_share_of_peak"] is None
    else:
        assert r["tflops_share_of_peak"] == pytest.approx(r["tflops_achieved"] / peak, abs=1e-4)


def test_cuda_graph_renderer_matches_eager_and_the_batch_is_sized_by_memory():
    from avatar_cli.graph_renderer import render_batch_for_memory
    from avatar_cli.pipelines.base import RenderStats
    from tests.pipelines.ditto_case import FACE_BOX, jittered_motions, portrait, tiny_ditto

    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    pipe = tiny_ditto("cuda", dtype)
    source = pipe.source_state(portrait(), FACE_BOX)
    infos = jittered_motions(source, 6)
    stats = RenderStats.of(pipe)

    def chunks():  # 4 + 2 frames: the graph's last chunk is padded to 4
        return torch.cat([pipe.render_crops(infos[:4], source, stats, 4), pipe.render_crops(infos[4:], source, stats, 4)])

    eager = chunks()
    pipe.set_renderer(4, cuda_graph=True)
    graph = chunks()
    static = pipe.renderer.static(None, 4)
    assert static.capture and static.graph is not None and static.replays == 2
    assert graph.shape == eager.shape == (6, 512, 512, 3) and graph.dtype == torch.float32
    # the same kernels replayed: bf16 rounding where the padded batch picks other kernels, no more
    diff = (graph - eager).abs()
    assert diff.mean() < 0.5 and diff.max() <= 8, (diff.mean(), diff.max())
    torch.testing.assert_close(pipe.render_crops(infos[:4], source, stats, 4), graph[:4], rtol=0, atol=0)  # replay
    assert static.replays == 3 and pipe.renderer.static(None, 4) is static  # captured once
    pipe.set_renderer(0)  # auto: offline batches sized by the free memory
    batch = pipe.renderer.offline_batch(pipe.render_batch, lambda: pipe._warp_decode(
        source.features, source.keypoints, source.keypoints))
    r = pipe.describe(RenderOptions(model="ditto"))["renderer"]
    assert r["sized_by"] == "memory" and r["per_frame_bytes"] > 0 and r["free_bytes"] > 0
    assert r["render_batch"] == batch == render_batch_for_memory(r["free_bytes"], r["per_frame_bytes"])
    assert pipe.describe(RenderOptions(model="ditto"), stream=True)["renderer"]["render_batch"] == 4
