"""`--model hallo` end to end: Hallo's files (tiny, written by the test) -> convert -> render."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from avatar_cli import UNetPipeline, RenderOptions
from avatar_cli.cli import main
from avatar_cli.media.face import FaceConditions
from avatar_cli.models.presets import preset
from tests.conftest import ffmpeg, probe
from tests.models.test_hallo import DATA, load_file


@pytest.fixture(scope="module")
def hallo_files(tmp_path_factory):
    """Hallo's release layout, tiny: hallo/net.pth (Hallo's key names), sd-vae-ft-mse/, wav2vec/..."""
    root = tmp_path_factory.mktemp("hallo-release")
    raw = load_file(DATA / "hallo_tiny.safetensors")
    scale = raw["meta.state_int8_scale"].item()
    state = {k[len("state."):]: (v.float() * scale if v.dtype == torch.int8 else v)
             for k, v in raw.items() if k.startswith("state.")}
    (root / "hallo").mkdir()
    torch.save(state, root / "hallo" / "net.pth")
    cfg = preset("tiny")
    with torch.random.fork_rng():
        torch.manual_seed(5)
        AutoencoderKL(**cfg["vae"]).save_pretrained(root / "sd-vae-ft-mse")
        Wav2Vec2Model(Wav2Vec2Config(**cfg["audio_encoder"])).save_pretrained(root / "wav2vec" / "wav2vec2-base-960h")
    Wav2Vec2FeatureExtractor().save_pretrained(root / "wav2vec" / "wav2vec2-base-960h")
    return root


@pytest.fixture(scope="module")
def converted(hallo_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "hallo"
    code = main(["weights", "convert", "--from", "hallo", str(hallo_files / "hallo" / "net.pth"), "--vae",
                 str(hallo_files / "sd-vae-ft-mse"), "--wav2vec2", str(hallo_files / "wav2vec" / "wav2vec2-base-960h"),
                 "--arch", "tiny", "-o", str(out), "--json"])
    assert code == 0
    return out


def test_convert_reports_zero_missing_and_unexpected(converted, capsys):
    index = json.loads((converted / "avatar_index.json").read_text())
    assert index["settings"]["default_method"] == "hallo" and index["face_locator"] == "FaceLocator"
    assert sorted(p.name for p in converted.iterdir()) == sorted(
        ["audio_encoder", "audio_projector", "avatar_index.json", "denoising_unet", "face_locator",
         "image_projector", "reference_net", "scheduler", "vae"])
    schedule = json.loads((converted / "scheduler" / "scheduler_config.json").read_text())
    assert schedule["prediction_type"] == "v_prediction" and schedule["timestep_spacing"] == "trailing"


def test_convert_report_json(hallo_files, tmp_path, capsys):
    capsys.readouterr()
    assert main(["weights", "convert", "--from", "hallo", str(hallo_files / "hallo" / "net.pth"), "--vae",
                 str(hallo_files / "sd-vae-ft-mse"), "--wav2vec2", str(hallo_files / "wav2vec" / "wav2vec2-base-960h"),
                 "--arch", "tiny", "-o", str(tmp_path / "x"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {c["name"] for c in report["components"]} == {"reference_net", "denoising_unet", "face_locator",
                                                          "image_projector", "audio_projector"}
    assert all(c["missing"] == 0 and c["unexpected"] == [] for c in report["components"])
    # a wrong architecture is a shape error, reported in one line
    assert main(["weights", "convert", "--from", "hallo", str(hallo_files / "hallo" / "net.pth"), "--vae",
                 str(hallo_files / "sd-vae-ft-mse"), "--wav2vec2", str(hallo_files / "wav2vec" / "wav2vec2-base-960h"),
                 "-o", str(tmp_path / "y")]) == 1
    assert "--arch" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_render_hallo_end_to_end(converted, test_data, tmp_path, capsys):
    speech = tmp_path / "s.wav"
    ffmpeg("-i", str(test_data / "speech_espeak_48k.wav"), "-t", "0.9", str(speech))
    out = tmp_path / "hallo.mp4"
    code = main(["render", str(test_data / "astronaut.png"), str(speech), "--model", "hallo", "--weights",
                 str(converted), "--size", "64", "--no-face-embedding", "--face-box", "90,35,50,55",
                 "--steps", "6", "-o", str(out), "--json", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["model"] == "hallo" and result["nfe"] == 12 and result["guidance"] == {"rule": "cfg", "scale": 3.5}
    assert result["evaluations"] == 12 * -(-result["frames"] // 16)  # 2 clips of 16
    info = probe(out)
    assert info["frames"] == int(0.9 * 25 + 0.5) and info["audio_streams"] == 1  # halves round up


def test_missing_arcface_says_so_in_one_line(converted, test_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AVATAR_MANIFEST", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    code = main(["render", str(test_data / "astronaut.png"), str(test_data / "speech_espeak.wav"), "--model",
                 "hallo", "--weights", str(converted), "--size", "64", "--face-box", "90,35,50,55",
                 "-o", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--no-face-embedding" in err[0] and not (tmp_path / "o.mp4").exists()


def test_no_face_on_the_cat_falls_back_with_a_warning(converted, test_data, tmp_path, capsys, monkeypatch):
    from avatar_cli.media import face as face_mod

    monkeypatch.setattr(face_mod, "detect_face", lambda image: None)  # as MediaPipe answers on the cat photo
    speech = tmp_path / "s.wav"
    ffmpeg("-i", str(test_data / "speech_espeak.wav"), "-t", "0.3", str(speech))
    code = main(["render", str(test_data / "cat_chelsea.png"), str(speech), "--model", "hallo", "--weights",
                 str(converted), "--size", "64", "--no-face-embedding", "--steps", "4", "-o", str(tmp_path / "c.mp4")])
    err = capsys.readouterr().err
    assert code == 0 and "no face found; the whole frame is taken as the face" in err
    assert probe(tmp_path / "c.mp4")["frames"] == int(0.3 * 25 + 0.5)


def test_face_box_outside_the_image_is_refused(converted, test_data, tmp_path, capsys):
    code = main(["render", str(test_data / "cat_chelsea.png"), str(test_data / "speech_espeak.wav"), "--model",
                 "hallo", "--weights", str(converted), "--face-box", "400,0,100,100", "--no-face-embedding",
                 "-o", str(tmp_path / "o.mp4")])
    assert code == 2 and "outside the 226x150 image" in capsys.readouterr().err


def test_hallo_clip_loop_follows_hallos_settings(converted, test_data, monkeypatch):
    pipe = UNetPipeline.from_pretrained(converted, device="cpu", dtype="float32")
    from avatar_cli.media.image import load_portrait

    image = load_portrait(test_data / "astronaut.png", 64)
    wave = (0.1 * np.random.default_rng(0).standard_normal(int(16000 * 1.1))).astype(np.float32)  # 28 frames
    encoded, features = [], []
    encode = pipe.encode_pixels
    monkeypatch.setattr(pipe, "encode_pixels", lambda px: (encoded.append(px.shape[0]), encode(px))[1])
    real_features = pipe.audio_features
    monkeypatch.setattr(pipe, "audio_features", lambda w, fps, pad=None: (features.append(pad), real_features(w, fps, pad))[1])
    face = FaceConditions(torch.randn(512), torch.zeros(3, 64, 64), None, (0, 0, 64, 64), (0, 0, 1, 1), "test")
    frames = np.concatenate(list(pipe.generate(image, wave, RenderOptions(model="hallo", size=64, num_inference_steps=3),
                                               face=face)))
    assert frames.shape[0] == 28
    # portrait once, then the last 2 decoded frames of clip 0 encoded again for clip 1 (Hallo's motion frames)
    assert encoded == [1, 2, 2]
    assert features == [16]  # audio padded to whole clips before wav2vec2, as Hallo does
    # with a face embedding, the motion frames are run with Hallo's alternating face tokens: 2 calls per clip
    assert pipe.reference_net_calls == 1 + 2 * 2
    # our own samplers run on Hallo's weights too (DDIM multi-CFG, rolling starts)
    out = list(pipe.generate(image, wave[:8000], RenderOptions(model="teacher", size=64, num_inference_steps=2,
                                                               init="rolling", start_timestep=900)))
    assert sum(len(f) for f in out) == 13  # 12.5 frames, halves round up
    # ... and Hallo's own sampler with every init mode, and the one-step and few-step LCM samplers
    for model, init, steps in (("hallo", "rolling", 2), ("hallo", "combined-rolling", 2), ("osa-lcm", "gaussian", 1),
                               ("adv-lcm", "combined-rolling", 2)):
        out = list(pipe.generate(image, wave, RenderOptions(model=model, size=64, num_inference_steps=steps, init=init,
                                                            start_timestep=900), face=face))
        frames = np.concatenate(out)
        assert frames.shape == (28, 64, 64, 3) and frames.std() > 0, (model, init)


def test_the_documented_flow_without_paths(hallo_files, test_data, tmp_path, monkeypatch, capsys):
    """docs/hallo.md: 'avatar weights convert --from hallo' reads the installed component and
    'avatar render --model hallo' then needs no --weights."""
    stick = tmp_path / "stick"
    stick.mkdir()
    (stick / "hallo").symlink_to(hallo_files)  # the component's files in the repo layout, as downloaded
    monkeypatch.setenv("AVATAR_WEIGHTS_DIR", str(stick))
    monkeypatch.setenv("AVATAR_HOME", str(tmp_path / "home"))
    speech = tmp_path / "s.wav"
    ffmpeg("-i", str(test_data / "speech_espeak.wav"), "-t", "0.4", str(speech))
    args = ["render", str(test_data / "astronaut.png"), str(speech), "--model", "hallo", "--size", "64",
            "--no-face-embedding", "--face-box", "90,35,50,55", "--steps", "2", "-o", str(tmp_path / "h.mp4"), "-q"]
    assert main(args) == 2
    assert "avatar weights convert --from hallo" in capsys.readouterr().err  # not converted yet: says how
    assert main(["weights", "convert", "--from", "hallo", "--arch", "tiny"]) == 0
    assert (tmp_path / "home" / "converted" / "hallo" / "avatar_index.json").is_file()
    assert main(args) == 0
    assert probe(tmp_path / "h.mp4")["frames"] == 10


def test_motion_scale_reaches_the_audio_branches(converted, test_data):
    from avatar_cli.media.image import load_portrait

    pipe = UNetPipeline.from_pretrained(converted, device="cpu", dtype="float32")
    image = load_portrait(test_data / "astronaut.png", 64)
    wave = (0.1 * np.random.default_rng(1).standard_normal(8000)).astype(np.float32)
    face = FaceConditions(None, torch.zeros(3, 64, 64), None, (0, 0, 64, 64), (0, 0, 1, 1), "test")
    runs = {}
    for scale in ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 2.0)):
        options = RenderOptions(model="hallo", size=64, num_inference_steps=2, audio_weights=scale)
        runs[scale] = np.concatenate(list(pipe.generate(image, wave, options, face=face)))
    same = np.concatenate(list(pipe.generate(image, wave, RenderOptions(model="hallo", size=64, num_inference_steps=2),
                                             face=face)))
    assert np.array_equal(same, runs[(1.0, 1.0, 1.0)])  # the default is 1,1,1
    assert not np.array_equal(runs[(1.0, 1.0, 1.0)], runs[(0.0, 0.0, 0.0)])
    assert not np.array_equal(runs[(1.0, 1.0, 1.0)], runs[(1.0, 1.0, 2.0)])


def test_hallos_unconditional_branch_as_the_pipeline_builds_it(converted, test_data, monkeypatch):
    """CFG with Hallo's null branch: zero face embedding, zero audio, zero face-locator features and
    no reference keys/values; motion frames and masks kept; both branches in one batch of 2."""
    from avatar_cli.media.image import load_portrait

    pipe = UNetPipeline.from_pretrained(converted, device="cpu", dtype="float32")
    unet = pipe.models.denoising_unet
    calls = []
    real = unet.forward

    def recording(sample, timestep, *args, **kwargs):
        calls.append((sample.shape, kwargs))
        return real(sample, timestep, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", recording)
    image = load_portrait(test_data / "astronaut.png", 64)
    wave = (0.1 * np.random.default_rng(2).standard_normal(6400)).astype(np.float32)
    embedding = torch.randn(512, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(3, 64, 64)
    mask[:, 8:40, 16:48] = 1
    face = FaceConditions(embedding, mask, None, (16, 8, 32, 32), (24, 30, 16, 6), "test")
    list(pipe.generate(image, wave, RenderOptions(model="hallo", size=64, num_inference_steps=1), face=face))
    assert len(calls) == 1  # one step, both branches in one call
    shape, kw = calls[0]
    assert shape[0] == 2
    null_tokens = pipe.models.image_projector.null_tokens(1)
    with torch.no_grad():
        face_tokens = pipe.models.image_projector(embedding[None])
    torch.testing.assert_close(kw["encoder_hidden_states"][0:1], null_tokens)
    torch.testing.assert_close(kw["encoder_hidden_states"][1:2], face_tokens)
    assert torch.count_nonzero(kw["audio_embeds"][0]) == 0 and torch.count_nonzero(kw["audio_embeds"][1]) > 0
    locator = kw["conditioning_features"]
    assert torch.count_nonzero(locator[0]) == 0 and torch.count_nonzero(locator[1]) > 0
    assert kw["reference_features"].keep.tolist() == [False, True]
    motion = kw["motion_features"]
    assert motion is not None and all(v.shape[0] == 2 * 2 for v in motion.values())  # 2 motion frames a branch


def test_lip_box_and_face_expand_ratio_reach_the_face_conditions(test_data, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from avatar_cli import render_options
    from avatar_cli.errors import InputError
    from avatar_cli.options import prepare_job
    from avatar_cli.pipelines import unet as unet_mod

    # the command line's and a jobs file's spelling
    opts = render_options.build({"lip_box": "40,60,30,12", "face_expand_ratio": 1.5, "face_box": "30,20,90,110"})
    assert opts.lip_box == (40.0, 60.0, 30.0, 12.0) and opts.face_expand_ratio == 1.5
    assert render_options.column_value("lip_box", "1,2,3,4") == ("lip_box", (1.0, 2.0, 3.0, 4.0))
    assert render_options.column_value("face_expand_ratio", "1.3") == ("face_expand_ratio", 1.3)
    assert "--lip-box" in [o.flag for o in render_options.RENDER_OPTIONS]
    speech = test_data / "speech_espeak.wav"
    # the boxes in frame pixels, and the square portrait's own side: the cat (226x150) cut to 150 px
    job = prepare_job(test_data / "cat_chelsea.png", speech, tmp_path / "o.mp4",
                      RenderOptions(model="hallo", size=64, lip_box=(100, 60, 30, 15), face_box=(70, 10, 90, 120)))
    assert job.side == 150 and job.lip_box == pytest.approx(((100 - 38) * 64 / 150, 60 * 64 / 150, 12.8, 6.4))
    assert prepare_job(test_data / "cat_chelsea.png", speech, tmp_path / "o.mp4",
                       RenderOptions(model="hallo", size=64, fit="pad")).side == 226
    for bad, message in (({"lip_box": (0, 0, 0, 5)}, "--lip-box must be"), ({"face_expand_ratio": 0.0}, "(0, 4]"),
                         ({"lip_box": (200, 100, 50, 60)}, "--lip-box 200,100,50,60 lies outside the 226x150")):
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace("]", r"\]")):
            prepare_job(test_data / "cat_chelsea.png", speech, tmp_path / "o.mp4",
                        RenderOptions(model="hallo", size=64, **bad))
    # the pipeline hands them on
    seen = {}
    monkeypatch.setattr(unet_mod, "build_face_conditions", lambda *args, **kwargs: seen.update(kwargs))
    fake = SimpleNamespace(source="random:tiny", vae_scale=8, warn=print)
    unet_mod.UNetPipeline.face_conditions(fake, job.image, job.options, job.face_box, job.lip_box, job.side)
    assert seen["lip_box"] == job.lip_box and seen["side"] == 150 and seen["face_expand_ratio"] == 1.2
