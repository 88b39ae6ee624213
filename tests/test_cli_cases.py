"""More `avatar render` cases: failed work (exit 1), unreadable inputs as any user, weights
folders without CFG-token layers, multi-step Adv-LCM, and option values out of range."""

import json
import os

import numpy as np
import pytest

from avatar_cli.cli import main
from avatar_cli.media.audio import load_speech
from avatar_cli.models.bundle import AvatarModels
from tests.conftest import ffmpeg, probe

SMALL = ["--size", "64", "--quiet", "--device", "cpu"]
TINY = ["--random-weights", "--arch", "tiny", *SMALL]


@pytest.fixture
def speech(tmp_path, test_data):
    path = tmp_path / "speech.wav"
    ffmpeg("-i", str(test_data / "speech_espeak.wav"), "-t", "0.6", str(path))
    return path


def test_unreadable_weights_are_failed_work_exit_1(tmp_path, test_data, speech, capsys):
    AvatarModels.from_preset("tiny").save_pretrained(tmp_path / "w")
    blob = tmp_path / "w" / "denoising_unet" / "diffusion_pytorch_model.safetensors"
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    out = tmp_path / "talk.mp4"
    assert main(["render", str(test_data / "astronaut.png"), str(speech), "--weights", str(tmp_path / "w"),
                 "-o", str(out), *SMALL]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load weights" in err[0]
    assert [p.name for p in tmp_path.iterdir() if "talk" in p.name] == []


def test_unreadable_inputs_are_named_even_for_root(tmp_path, test_data, speech, monkeypatch, capsys):
    """Root reads files whatever their mode, so the permission is taken away by monkeypatching."""
    import PIL.Image

    locked = str(tmp_path / "locked")
    real_access, real_open = os.access, PIL.Image.open
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(locked) else
                        real_access(p, mode, **kw))

    def guarded_open(fp, *args, **kwargs):
        if str(fp).startswith(locked):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", guarded_open)
    (tmp_path / "locked.wav").write_bytes(speech.read_bytes())
    (tmp_path / "locked.png").write_bytes((test_data / "astronaut.png").read_bytes())
    assert main(["render", str(test_data / "astronaut.png"), locked + ".wav", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "locked.wav" in err[0] and "is not readable" in err[0]
    assert main(["render", locked + ".png", str(speech), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "locked.png" in err[0] and "is not readable" in err[0]
    # the library's own checks, below the command line's
    from avatar_cli.errors import InputError
    from avatar_cli.media.image import load_portrait

    with pytest.raises(InputError, match="not readable \\(permission denied\\)"):
        load_speech(locked + ".wav")
    with pytest.raises(InputError, match="not readable \\(permission denied\\)"):
        load_portrait(locked + ".png", 64)


@pytest.mark.parametrize("codec", ["pcm_s24le", "pcm_f32le", "pcm_u8"])
def test_wav_of_24_bit_float_and_8_bit_samples(tmp_path, speech, codec):
    other = tmp_path / f"{codec}.wav"
    ffmpeg("-i", str(speech), "-c:a", codec, str(other))
    reference = np.asarray(load_speech(speech))
    decoded = np.asarray(load_speech(other))
    assert decoded.shape == reference.shape
    tolerance = 1e-2 if codec == "pcm_u8" else 1e-4  # 8-bit quantisation step is 1/128
    assert np.abs(decoded - reference).max() < tolerance


def test_fada_needs_cfg_layers_or_the_explicit_flag(tmp_path, test_data, speech, capsys):
    AvatarModels.from_preset("tiny").save_pretrained(tmp_path / "w")  # a teacher: no CFG-token layers
    args = ["render", str(test_data / "astronaut.png"), str(speech), "--weights", str(tmp_path / "w"),
            "--model", "fada", "-o", str(tmp_path / "f.mp4"), "--json", *SMALL]
    assert main(args) == 2
    assert "--add-cfg-layers" in capsys.readouterr().err and not (tmp_path / "f.mp4").exists()
    assert main([*args, "--add-cfg-layers"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["nfe"] == 6 and result["evaluations"] == 6 * -(-result["frames"] // 16)
    assert probe(tmp_path / "f.mp4")["frames"] == 15


def test_adv_lcm_four_steps_reports_nfe_4(tmp_path, test_data, speech, capsys):
    assert main(["render", str(test_data / "astronaut.png"), str(speech), "--model", "adv-lcm", "--steps", "4",
                 "-o", str(tmp_path / "a.mp4"), "--json", *TINY]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["nfe"], result["num_inference_steps"], result["evaluations"]) == (4, 4, 4)


@pytest.mark.parametrize("args,words", [
    (["--audio-weights", "1,2"], "--audio-weights must be three weights"),
    (["--audio-weights", "a,b,c"], "--audio-weights takes comma-separated numbers"),
    (["--window-steps", "2,2,x"], "--window-steps takes comma-separated numbers"),
    (["--model", "fada", "--init", "rolling"], "--init"),
])
def test_option_values_out_of_range_are_usage_errors(tmp_path, test_data, speech, capsys, args, words):
    assert main(["render", str(test_data / "astronaut.png"), str(speech), "-o", str(tmp_path / "x.mp4"),
                 *args, *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "x.mp4").exists()


def test_progress_bar_and_notes_on_a_terminal_and_not_with_quiet(tmp_path, test_data, speech, monkeypatch,
                                                                 capsys):
    import sys

    from avatar_cli.cli import render as cli

    shown = []
    real = cli.progress

    class Recording(real):
        def __enter__(self):
            on_clip = super().__enter__()
            shown.append(self.enabled)
            return on_clip

    monkeypatch.setattr(cli, "progress", Recording)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    base = ["render", str(test_data / "astronaut.png"), str(speech), "--random-weights", "--arch", "tiny",
            "--size", "64", "--device", "cpu"]
    assert main([*base, "-o", str(tmp_path / "a.mp4")]) == 0
    assert "RANDOM weights" in capsys.readouterr().err and shown == [True]
    assert main([*base, "-o", str(tmp_path / "b.mp4"), "--quiet"]) == 0
    assert capsys.readouterr().err == "" and shown == [True, False]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert main([*base, "-o", str(tmp_path / "c.mp4")]) == 0
    assert shown == [True, False, False]  # not a terminal: no bar, the notes still go to stderr


def test_compile_gives_the_same_frames(test_data):
    """--compile (torch.compile of the denoising U-Net and decoder, inductor on the CPU here)."""
    import torch

    from avatar_cli import UNetPipeline, RenderOptions
    from avatar_cli.media.image import load_portrait

    models = AvatarModels.from_preset("tiny", seed=2)
    image = load_portrait(test_data / "astronaut.png", 64)
    waveform = (0.1 * np.random.default_rng(0).standard_normal(9600)).astype(np.float32)
    options = RenderOptions(size=64, seed=4)
    eager = np.concatenate(list(UNetPipeline(models, "cpu", torch.float32).generate(image, waveform, options)))
    compiled = np.concatenate(list(UNetPipeline(models, "cpu", torch.float32, compile=True)
                                   .generate(image, waveform, options)))
    assert compiled.shape == eager.shape == (15, 64, 64, 3)
    diff = np.abs(compiled.astype(int) - eager.astype(int))
    assert diff.max() <= 2, diff.max()  # fused kernels round differently, never visibly


DITTO_TINY = ["--model", "ditto", "--random-weights", "--arch", "tiny", "--quiet", "--device", "cpu"]


@pytest.mark.parametrize("args,words", [
    (["--size", "256"], "--size does not apply to --model ditto, which renders at the portrait's own size; leave --size out"),
    (["--fit", "pad"], "--fit does not apply to --model ditto"),
    (["--fps", "30"], "--model ditto renders at 25 fps (got --fps 30); leave --fps out"),
])
def test_ditto_options_it_would_ignore_fail_naming_the_fix(tmp_path, test_data, speech, capsys, args, words):
    """Issue 23: --size was silently ignored with --model ditto (it renders at the portrait's size)."""
    assert main(["render", str(test_data / "astronaut.png"), str(speech), "-o", str(tmp_path / "x.mp4"),
                 *args, *DITTO_TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "x.mp4").exists()


def test_speech_and_image_swapped_say_the_order(tmp_path, test_data, speech, capsys):
    odd = tmp_path / "speech.bin"  # no audio suffix: the RIFF/WAVE header tells
    odd.write_bytes(speech.read_bytes())
    for first in (speech, odd):
        assert main(["render", str(first), str(test_data / "astronaut.png"), "-o", str(tmp_path / "x.mp4"),
                     *TINY]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{first} looks like audio, not an image: the order is IMAGE AUDIO" in err[0], err
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert main(["render", str(text), str(speech), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not an image Pillow can read" in err and "IMAGE AUDIO" not in err


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    """No weights installed: AVATAR_HOME and the Hugging Face cache in tmp_path, offline."""
    monkeypatch.setenv("AVATAR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_HUB_CACHE", "AVATAR_WEIGHTS_DIR", "AVATAR_MANIFEST"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.mark.parametrize("model,steps", [
    ("hallo", ["run 'avatar weights download hallo'", "then 'avatar weights convert --from hallo'"]),
    ("echomimic-acc", ["run 'avatar weights download echomimic-acc'", "run 'avatar weights download sd-vae-ft-mse'",
                       "then 'avatar weights convert --from echomimic --acc'"]),
])
def test_a_converted_model_not_installed_names_download_and_convert(empty_home, test_data, speech, capsys, model,
                                                                   steps):
    assert main(["render", str(test_data / "astronaut.png"), str(speech), "--model", model,
                 "-o", str(empty_home / "x.mp4"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--model {model} needs weights that are not installed" in err[0]
    positions = [err[0].index(step) for step in steps]  # every step, in the order to run them
    assert positions == sorted(positions), err[0]


def test_eval_of_a_portrait_or_speech_says_it_is_not_a_video(empty_home, test_data, speech, capsys):
    """Issue 23: 'avatar eval portrait.png' answered that SyncNet's weights are not installed."""
    assert main(["eval", str(test_data / "astronaut.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "astronaut.png is an image (PNG), not a video" in err[0] and "SyncNet" not in err[0]
    assert main(["eval", str(speech)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "speech.wav is not a video ffmpeg can read" in err[0]


def test_face_box_help_names_every_family_that_asks_for_it():
    """EchoMimic's no-face warning asks for --face-box (media/face.py), so its help names echomimic too."""
    from avatar_cli.render_options import BY_NAME

    assert "(hallo, ditto, echomimic)" in BY_NAME["face_box"].help
