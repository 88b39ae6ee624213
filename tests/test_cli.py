"""The `avatar` command end to end: real files in, an mp4 read back with ffmpeg, and bad input."""

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avatar_cli.cli import main
from avatar_cli.media.audio import load_speech
from avatar_cli.models.bundle import AvatarModels
import numpy as np

from tests.conftest import ffmpeg, probe, read_frames, wait_until_writing

TINY = ["--random-weights", "--arch", "tiny", "--size", "64", "--quiet"]


def avatar(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would."""
    exe = Path(sys.executable).with_name("avatar")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def test_render_real_portrait_and_speech_end_to_end(tmp_path, test_data):
    speech = test_data / "speech_espeak_48k.wav"
    out = tmp_path / "talk.mp4"
    proc = avatar("render", str(test_data / "astronaut.png"), str(speech), "-o", str(out), "--json", *TINY)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    info = probe(out)
    speech_s = load_seconds(speech)
    assert abs(info["duration_s"] - speech_s) <= 1 / 25
    assert abs(info["audio_duration_s"] - speech_s) <= 1 / 25
    assert (info["fps"], info["width"], info["height"]) == (25.0, 64, 64)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["video_streams"] == 1 and info["audio_streams"] == 1
    assert result["frames"] == info["frames"] == round(speech_s * 25)
    assert result["nfe"] == 1 and result["evaluations"] == -(-info["frames"] // 16)  # one per clip of 16
    assert set(result["stages"]) == {"audio", "reference", "sampling", "decode", "write"}
    assert result["rtf"] > 0 and result["device"] == "cpu" and result["dtype"] == "float32" and result["seed"] == 0
    assert "RANDOM weights" not in proc.stderr  # --quiet
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.mp4"]


def load_seconds(path: Path) -> float:
    import wave

    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def test_default_output_name_overwrite_and_unusual_inputs(tmp_path, test_data, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ffmpeg("-i", str(test_data / "speech_espeak.wav"), "-t", "0.5", "-c:a", "libmp3lame", "short.mp3")
    assert main(["render", str(test_data / "cat_chelsea.png"), "short.mp3", *TINY]) == 0
    decoded_s = len(load_speech(tmp_path / "short.mp3")) / 16000  # mp3 adds encoder padding
    assert probe(tmp_path / "cat_chelsea.mp4")["frames"] == int(decoded_s * 25 + 0.5)
    assert main(["render", str(test_data / "cat_chelsea.png"), "short.mp3", *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["render", str(test_data / "cat_chelsea.png"), "short.mp3", *TINY, "--overwrite", "--fit", "pad"]) == 0
    # a video file's audio track, a grayscale portrait
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=32x32:rate=10:duration=1", "-f", "lavfi", "-i",
           "sine=frequency=200:duration=1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "clip.mp4")
    assert main(["render", str(test_data / "cameraman_gray.png"), "clip.mp4", "-o", "g.mp4", *TINY]) == 0
    video_audio = probe(tmp_path / "g.mp4")  # only the sound of the video given as audio
    assert abs(video_audio["duration_s"] - 1.0) <= 1 / 25
    assert (video_audio["video_streams"], video_audio["audio_streams"], video_audio["width"]) == (1, 1, 64)


def test_weights_folder_renders_like_the_same_random_weights(tmp_path, test_data):
    AvatarModels.from_preset("tiny", seed=0).save_pretrained(tmp_path / "w")
    args = [str(test_data / "astronaut.png"), str(test_data / "speech_espeak.wav"), "--size", "64", "--quiet"]
    assert main(["render", *args, "--weights", str(tmp_path / "w"), "-o", str(tmp_path / "a.mp4")]) == 0
    assert main(["render", *args, "--random-weights", "--arch", "tiny", "-o", str(tmp_path / "b.mp4")]) == 0
    assert main(["render", *args, "--random-weights", "--arch", "tiny", "-o", str(tmp_path / "c.mp4")]) == 0
    # same weights, seed, device, dtype: byte-identical files
    assert (tmp_path / "b.mp4").read_bytes() == (tmp_path / "c.mp4").read_bytes()
    # the same weights loaded from safetensors differ only by float32 rounding (memory layout of the
    # loaded tensors changes the CPU kernels' summation order), far below one grey level
    a, b = read_frames(tmp_path / "a.mp4").astype(int), read_frames(tmp_path / "b.mp4").astype(int)
    assert a.shape == b.shape and np.abs(a - b).mean() < 0.5


def _bad_inputs(tmp: Path, data: Path) -> dict[str, list[str]]:
    (tmp / "text.png").write_text("no image here")
    raw = (data / "astronaut.png").read_bytes()
    (tmp / "cut.png").write_bytes(raw[: len(raw) // 3])
    (tmp / "empty.wav").write_bytes(b"")
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0", str(tmp / "zero.wav"))  # header only
    if not (tmp / "zero.wav").exists() or os.path.getsize(tmp / "zero.wav") == 0:
        import wave

        with wave.open(str(tmp / "zero.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    (tmp / "notes.txt").write_text("this is not audio " * 20)
    img, wav, out = str(data / "astronaut.png"), str(data / "speech_espeak.wav"), str(tmp / "out" / "o.mp4")
    (tmp / "out").mkdir()
    return {
        "missing image": ["render", str(tmp / "nope.png"), wav, "-o", out],
        "not an image": ["render", str(tmp / "text.png"), wav, "-o", out],
        "truncated image": ["render", str(tmp / "cut.png"), wav, "-o", out],
        "missing audio": ["render", img, str(tmp / "nope.wav"), "-o", out],
        "empty audio": ["render", img, str(tmp / "empty.wav"), "-o", out],
        "zero-length audio": ["render", img, str(tmp / "zero.wav"), "-o", out],
        "not audio": ["render", img, str(tmp / "notes.txt"), "-o", out],
        "image as audio": ["render", img, img, "-o", out],
        "output is a folder": ["render", img, wav, "-o", str(tmp / "out")],
        "output folder missing": ["render", img, wav, "-o", str(tmp / "no" / "o.mp4")],
        "size not multiple of 64": ["render", img, wav, "-o", out, "--size", "100"],
        "fps out of range": ["render", img, wav, "-o", out, "--fps", "0"],
        "fps too high": ["render", img, wav, "-o", out, "--fps", "500"],
        "steps out of range": ["render", img, wav, "-o", out, "--steps", "0"],
        "steps too many": ["render", img, wav, "-o", out, "--steps", "99"],
        "noise level out of range": ["render", img, wav, "-o", out, "--start-timestep", "1000"],
        "cuda without a gpu": ["render", img, wav, "-o", out, "--device", "cuda"],
        "no weights": ["render", img, wav, "-o", out, "--no-download"],
        "unknown option": ["render", img, wav, "-o", out, "--bogus"],
        "bad init choice": ["render", img, wav, "-o", out, "--init", "uniform"],
    }


def test_bad_input_gives_one_line_exit_2_and_leaves_nothing(tmp_path, test_data, capsys):
    import torch

    cases = _bad_inputs(tmp_path, test_data)
    if torch.cuda.is_available():
        del cases["cuda without a gpu"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for label, argv in cases.items():
        if label != "no weights" and "--device" not in argv:
            argv = argv + (["--random-weights", "--arch", "tiny"] if "--bogus" not in argv else [])
        code = main(argv + ["--quiet"] if "--bogus" not in argv else argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, f"{label}: exit {code}, stderr {err!r}"
        assert len(lines) == 1 and lines[0].startswith("avatar: error: "), f"{label}: {err!r}"
        assert "Traceback" not in err
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, f"{label} left files behind"


def test_console_script_error_exit_code_and_no_traceback(tmp_path, test_data):
    proc = avatar("render", str(tmp_path / "missing.png"), str(test_data / "speech_espeak.wav"), *TINY)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("avatar: error: image") and "Traceback" not in proc.stderr
    assert avatar("--version").stdout.startswith("avatar-cli ")
    helptext = subprocess.run([str(Path(sys.executable).with_name("avatar")), "render", "--help"], capture_output=True,
                              text=True, env={**os.environ, "COLUMNS": "200"}).stdout
    assert "Examples" in helptext and "--random-weights" in helptext
    for method, nfe in (("osa-lcm", "NFE 1"), ("fada", "NFE 6"), ("fada-balanced", "NFE 18"), ("teacher", "NFE 75")):
        assert any(line.split()[:1] == [method] and nfe in line for line in helptext.splitlines()), method
    assert "[default: (<image stem>.mp4)]" in helptext  # defaults that are not values are shown too


def test_ctrl_c_removes_the_partial_file_and_exits_130(tmp_path, test_data):
    long = tmp_path / "long.wav"
    ffmpeg("-stream_loop", "24", "-i", str(test_data / "speech_espeak.wav"), str(long))  # 25 x 4 s
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    exe = Path(sys.executable).with_name("avatar")
    proc = subprocess.Popen([str(exe), "render", str(test_data / "astronaut.png"), str(long), "-o",
                             str(out_dir / "o.mp4"), *TINY], stderr=subprocess.PIPE, text=True)
    wait_until_writing(proc, out_dir, "o.mp4")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert list(out_dir.iterdir()) == []


def test_info_prints_parameter_counts(capsys):
    assert main(["info", "--arch", "full"]) == 0
    out = capsys.readouterr().out
    assert "859,520,964" in out and "1,525,528,324" in out
    assert main(["info", "--arch", "tiny", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["parameters"]["denoising_unet"] == AvatarModels.from_preset("tiny").parameter_counts()["denoising_unet"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_image(tmp_path, test_data, capsys):
    target = tmp_path / "locked.png"
    target.write_bytes((test_data / "astronaut.png").read_bytes())
    target.chmod(0)
    assert main(["render", str(target), str(test_data / "speech_espeak.wav"), *TINY]) == 2
    assert "not readable" in capsys.readouterr().err


@pytest.fixture
def observed(monkeypatch):
    """What the sampling really did: each denoising-U-Net call (timestep, batch size = guidance
    branches, the CFG-token scales it got, its output) and each prediction a scheduler stepped with."""
    from diffusers import DDIMScheduler, LCMScheduler

    from avatar_cli.models.denoising_unet import DenoisingUNet3D
    from avatar_cli.sampling.perflow import PeRFlowScheduler

    seen = {"unet": [], "steps": []}
    forward = DenoisingUNet3D.forward

    @functools.wraps(forward)
    def recording_forward(self, sample, timestep, *args, **kwargs):
        out = forward(self, sample, timestep, *args, **kwargs)
        seen["unet"].append({"t": int(timestep), "batch": sample.shape[0], "out": out.detach().clone(),
                             "guidance_scales": kwargs.get("guidance_scales")})
        return out

    monkeypatch.setattr(DenoisingUNet3D, "forward", recording_forward)
    for klass in (DDIMScheduler, LCMScheduler, PeRFlowScheduler):
        @functools.wraps(klass.step)  # the same signature: the sampler passes a generator where step takes one
        def recording_step(self, model_output, *args, _step=klass.step, **kwargs):
            seen["steps"].append(model_output.detach().clone())
            return _step(self, model_output, *args, **kwargs)

        monkeypatch.setattr(klass, "step", recording_step)
    return seen


def _check_guidance(seen, scales: tuple[float, ...]) -> None:
    """Each step's prediction is its U-Net call's output: as is (one branch), or FADA eq. 9 by hand
    over the batch of 3 (audio and reference, no audio, neither) with ``scales`` = (cfg_a, cfg_r)."""
    assert len(seen["steps"]) == len(seen["unet"]) > 0
    for call, prediction in zip(seen["unet"], seen["steps"]):
        out = call["out"].float()  # bf16 under --dtype auto on a native-bf16 CPU: the sampler gets it as fp32
        if call["batch"] == 3:
            a, r, b = out.chunk(3)
            out = scales[0] * a + (scales[1] - scales[0]) * r + (1 - scales[1]) * b
        torch.testing.assert_close(prediction, out, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("model,nfe,steps,branches,scales", [
    ("osa-lcm", 1, 1, 1, ()), ("adv-lcm", 2, 2, 1, ()),
    ("fada", 6, 6, 1, (6.5, 2.0)),  # CFG tokens: the U-Net gets the scales
    ("fada-balanced", 18, 6, 3, (6.5, 2.5)), ("teacher", 75, 25, 3, (6.5, 2.5)),
])
def test_every_model_renders_and_reports_its_nfe(tmp_path, test_data, capsys, observed, model, nfe, steps,
                                                  branches, scales):
    speech = tmp_path / "short.wav"
    ffmpeg("-i", str(test_data / "speech_espeak_48k.wav"), "-t", "0.8", str(speech))
    out = tmp_path / f"{model}.mp4"
    assert main(["render", str(test_data / "astronaut.png"), str(speech), "-o", str(out), "--model", model,
                 "--json", *TINY]) == 0
    result = json.loads(capsys.readouterr().out)
    calls = observed["unet"]
    # 20 frames = 2 clips of 16: `steps` U-Net calls per clip, each a batch of the guidance branches
    assert len(calls) == 2 * steps and [c["batch"] for c in calls] == [branches] * len(calls)
    timesteps = [c["t"] for c in calls]
    assert timesteps[:steps] == timesteps[steps:] and timesteps[:steps] == sorted(set(timesteps), reverse=True)
    assert [c["guidance_scales"] for c in calls] == [scales if model == "fada" else None] * len(calls)
    _check_guidance(observed, scales)
    assert sum(c["batch"] for c in calls) == result["evaluations"] == nfe * 2  # 2 clips
    # the former method names given as --model are shorthands: the result names the model and the method
    weights = {"adv-lcm": "osa-lcm", "fada-balanced": "fada"}.get(model, model)
    assert (result["model"], result["method"], result["nfe"], result["num_inference_steps"]) == \
        (weights, model, nfe, steps)
    info = probe(out)
    assert info["frames"] == 20 and info["audio_streams"] == 1 and info["video_streams"] == 1


def test_guidance_and_window_options_reach_the_sampler(tmp_path, test_data, capsys, observed):
    speech = tmp_path / "clip.wav"
    ffmpeg("-i", str(test_data / "speech_espeak.wav"), "-t", "0.6", str(speech))  # 15 frames: one clip
    args = ["render", str(test_data / "astronaut.png"), str(speech), *TINY]
    assert main([*args, "-o", str(tmp_path / "a.mp4"), "--model", "fada-balanced", "--window-steps", "3,1,1,1",
                 "--guidance-audio", "4", "--guidance-ref", "1.5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # PeRFlow's 4 windows of t in [1, 0] split 3, 1, 1, 1: t = 1, 1 - 1/12, 1 - 2/12 in the first,
    # then 3/4, 1/2, 1/4; the U-Net sees int(1000 t) (the default 2, 2, 1, 1 gives 1000, 875, 750, ...)
    assert [c["t"] for c in observed["unet"]] == [1000, 916, 833, 750, 500, 250]
    assert [c["batch"] for c in observed["unet"]] == [3] * 6 and result["evaluations"] == 18
    _check_guidance(observed, (4.0, 1.5))
    observed["unet"].clear(), observed["steps"].clear()
    assert main([*args, "-o", str(tmp_path / "b.mp4"), "--model", "fada", "--guidance-audio", "4",
                 "--guidance-ref", "1.5"]) == 0
    assert [c["t"] for c in observed["unet"]] == [1000, 875, 750, 625, 500, 250]
    assert [(c["batch"], c["guidance_scales"]) for c in observed["unet"]] == [(1, (4.0, 1.5))] * 6
    _check_guidance(observed, (4.0, 1.5))
    assert main([*args, "-o", str(tmp_path / "c.mp4"), "--window-steps", "2,x"]) == 2
    assert "--window-steps" in capsys.readouterr().err
