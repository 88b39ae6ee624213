"""Checkpoints of a width no preset has: written in each upstream layout (Hallo's ``net.pth``, EchoMimic's
files, Ditto's six ``.pth``), converted with ``avatar weights convert --config FILE``, rendered from the
folder with no flag about their sizes; and the config files' rules (``models/configs.py``)."""

from __future__ import annotations

import json
import math
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from avatar_cli.cli import main
from avatar_cli.convert import map_echomimic_state, map_hallo_state
from avatar_cli.errors import InputError
from avatar_cli.models.bundle import AvatarModels, random_whisper_checkpoint
from avatar_cli.models.configs import merge_config
from avatar_cli.models.ditto import DittoModels, ditto_config
from avatar_cli.models.presets import preset, resolve
from tests.conftest import ffmpeg, probe

DATA = Path(__file__).resolve().parent / "data"

# Widths of no preset: the tiny U-Nets at 16/48 channels (tiny: 32/64; AnimateDiff's 32 GroupNorm groups -> 8).
UNET_WIDTHS = {"reference_net": {"block_out_channels": [16, 48]},
               "denoising_unet": {"block_out_channels": [16, 48], "motion_norm_num_groups": 8},
               "face_locator": {"embedding_channels": 16}}
HALLO_CONFIG = {"base": "tiny", **UNET_WIDTHS}
# EchoMimic's also with a 48-wide Whisper (tiny: 32), which sets the U-Net's audio context, and other face-locator widths
ECHOMIMIC_CONFIG = merge_config(UNET_WIDTHS, {
    "base": "tiny", "denoising_unet": {"cross_attention_dim": 48, "audio_attention_dim": 48},
    "audio_encoder": {"n_audio_state": 48, "n_audio_head": 4},
    "face_locator": {"block_out_channels": [8, 16, 24, 32]}})
DITTO_CONFIG = {"base": "tiny", "appearance": {"block_expansion": 12}, "motion": {"dims": [8, 16, 24, 40]},
                "decoder": {"spade_hidden": 12}, "dit": {"latent_dim": 48, "ff_size": 96}}


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def to_animatediff(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our denoising U-Net's motion-module keys -> AnimateDiff's (``temporal_transformer``, ``attention_blocks``,
    ``norms``, ``ff_norm``, one position table per attention block): the inverse of diffusers'
    ``convert_animatediff_checkpoint_to_diffusers`` that ``convert_motion_module`` applies."""
    out = {}
    for key, value in state.items():
        if ".motion_modules." not in key:
            out[key] = value
            continue
        key = re.sub(r"(\.motion_modules\.\d+\.)", r"\1temporal_transformer.", key)
        if key.endswith(".pos_embed.pe"):
            for block in (0, 1):
                out[key.replace("pos_embed.pe", f"attention_blocks.{block}.pos_encoder.pe")] = value
            continue
        for ours, theirs in ((".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1."),
                             (".norm1.", ".norms.0."), (".norm2.", ".norms.1."), (".norm3.", ".ff_norm.")):
            key = key.replace(ours, theirs)
        out[key] = value
    return out


def _speech(test_data, tmp_path, seconds: float) -> Path:
    speech = tmp_path / "s.wav"
    ffmpeg("-i", str(test_data / "speech_espeak.wav"), "-t", str(seconds), str(speech))
    return speech


def _vae_folder(folder: Path) -> Path:
    from diffusers import AutoencoderKL

    with torch.random.fork_rng():
        torch.manual_seed(5)
        AutoencoderKL(**preset("tiny")["vae"]).save_pretrained(folder)
    return folder


def test_hallo_checkpoint_of_another_width_converts_and_renders(tmp_path, capsys, test_data):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    models = AvatarModels.from_config(resolve(HALLO_CONFIG, "hallo"), seed=3)
    assert list(models.denoising_unet.config.block_out_channels) == [16, 48]
    nets = {"reference_unet.": models.reference_net, "face_locator.": models.face_locator,
            "imageproj.": models.image_projector, "audioproj.": models.audio_projector}
    net = {p + k: v for p, m in nets.items() for k, v in m.state_dict().items()}
    audio = {".audio_attn.full.": ".attn2_0.", ".audio_attn.face.": ".attn2_1.", ".audio_attn.lip.": ".attn2_2.",
             ".zero_conv.full.": ".zero_conv_full.", ".zero_conv.face.": ".zero_conv_face.",
             ".zero_conv.lip.": ".zero_conv_lip."}
    for key, value in to_animatediff(models.denoising_unet.state_dict()).items():
        for ours, theirs in audio.items():
            key = key.replace(ours, theirs)
        net["denoising_unet." + key] = value
    # the layout written is the one the converter reads: mapped back, it is our state, key for key
    mapped = map_hallo_state(net)["denoising_unet"]
    ours = models.denoising_unet.state_dict()
    assert mapped.keys() == ours.keys() and all(torch.equal(mapped[k], ours[k]) for k in ours)
    torch.save(net, tmp_path / "net.pth")
    wav2vec2 = tmp_path / "wav2vec2"
    Wav2Vec2Model(Wav2Vec2Config(**preset("tiny")["audio_encoder"])).save_pretrained(wav2vec2)
    Wav2Vec2FeatureExtractor().save_pretrained(wav2vec2)
    vae = _vae_folder(tmp_path / "vae")
    config = tmp_path / "student.json"
    config.write_text(json.dumps(HALLO_CONFIG))
    args = ("weights", "convert", "--from", "hallo", tmp_path / "net.pth", "--vae", vae, "--wav2vec2", wav2vec2)

    capsys.readouterr()  # the saving above
    # the preset's sizes do not fit: one line, nothing written
    code, _, err = _run(capsys, *args, "--arch", "tiny", "-o", tmp_path / "no")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--config" in err and not (tmp_path / "no").exists()
    code, out, err = _run(capsys, *args, "--config", config, "-o", tmp_path / "out", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert all(c["missing"] == 0 and c["unexpected"] == [] for c in report["components"])
    assert {c["name"]: c["loaded"] for c in report["components"]}["denoising_unet"] == len(ours)
    loaded = AvatarModels.from_pretrained(tmp_path / "out")
    assert all(torch.equal(v, ours[k]) for k, v in loaded.denoising_unet.state_dict().items())

    mp4 = tmp_path / "student.mp4"
    code, out, err = _run(capsys, "render", test_data / "astronaut.png", _speech(test_data, tmp_path, 0.4), "--model",
                          "hallo", "--weights", tmp_path / "out", "--size", "64", "--no-face-embedding", "--face-box",
                          "90,35,50,55", "--steps", "2", "-o", mp4, "--json", "--quiet")
    assert code == 0, err
    info = probe(mp4)
    assert info["frames"] == 10 and (info["width"], info["height"]) == (64, 64) and info["audio_streams"] == 1


def test_echomimic_checkpoint_of_another_width_converts_and_renders(tmp_path, capsys, test_data):
    cfg = resolve(ECHOMIMIC_CONFIG, "echomimic")
    models = AvatarModels.from_config(cfg, seed=4, device="meta")  # shapes only: the files get their own values
    g = torch.Generator().manual_seed(0)

    def values(module):
        return {k: (torch.rand(v.shape, generator=g) - 0.5) * 0.2 for k, v in module.state_dict().items()}

    reference, denoising, face_locator = (values(m) for m in (models.reference_net, models.denoising_unet,
                                                             models.face_locator))
    denoising.update({k: AvatarModels.from_config(cfg, device="cpu").denoising_unet.state_dict()[k]
                      for k in denoising if k.endswith("pos_embed.pe")})  # sinusoids, as the file carries them
    upstream = to_animatediff(denoising)
    root = tmp_path / "EchoMimic"
    (root / "audio_processor").mkdir(parents=True)
    torch.save(reference, root / "reference_unet.pth")
    torch.save({k: v for k, v in upstream.items() if ".motion_modules." not in k}, root / "denoising_unet.pth")
    torch.save({k: v for k, v in upstream.items() if ".motion_modules." in k}, root / "motion_module.pth")
    torch.save(face_locator, root / "face_locator.pth")
    whisper = random_whisper_checkpoint(cfg["audio_encoder"], seed=2)
    torch.save(whisper, root / "audio_processor" / "whisper_tiny.pt")
    mapped = map_echomimic_state(reference, {k: v for k, v in upstream.items() if ".motion_modules." not in k},
                                 {k: v for k, v in upstream.items() if ".motion_modules." in k}, face_locator)
    assert mapped["denoising_unet"].keys() == denoising.keys()
    config = tmp_path / "echo.json"
    config.write_text(json.dumps(ECHOMIMIC_CONFIG))
    vae = _vae_folder(tmp_path / "vae")

    code, _, err = _run(capsys, "weights", "convert", "--from", "echomimic", root, "--vae", vae, "--arch", "tiny",
                        "-o", tmp_path / "no")
    assert code == 1 and "Whisper width 48" in err and not (tmp_path / "no").exists()
    code, out, err = _run(capsys, "weights", "convert", "--from", "echomimic", root, "--vae", vae, "--config", config,
                          "-o", tmp_path / "out", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert all(c["missing"] == 0 and c["unexpected"] == [] for c in report["components"])
    assert report["notes"]["whisper_dims"]["n_audio_state"] == 48
    loaded = AvatarModels.from_pretrained(tmp_path / "out")
    assert list(loaded.face_locator.config.block_out_channels) == [8, 16, 24, 32]
    assert all(torch.equal(v, denoising[k]) for k, v in loaded.denoising_unet.state_dict().items())

    mp4 = tmp_path / "echo.mp4"
    code, out, err = _run(capsys, "render", test_data / "astronaut.png", _speech(test_data, tmp_path, 0.4), "--model",
                          "echomimic", "--weights", tmp_path / "out", "--size", "64", "--face-box", "90,35,50,55",
                          "--steps", "2", "-o", mp4, "--json", "--quiet")
    assert code == 0, err
    info = probe(mp4)
    assert info["frames"] == 10 and (info["width"], info["height"]) == (64, 64) and info["audio_streams"] == 1


def test_ditto_checkpoint_of_another_width_converts_and_renders(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from avatar_cli.bench import synthetic_portrait, synthetic_speech
    from avatar_cli.convert import DITTO_AUX_FILES
    from tests.models.ditto.test_loaders import write_release
    from tests.test_safe_pickle import ditto_cfg

    models = DittoModels.from_config(ditto_config(DITTO_CONFIG), seed=6)
    root = tmp_path / "ditto-talkinghead"
    (root / "ditto_pytorch").mkdir(parents=True)
    write_release(models, root / "ditto_pytorch" / "models")
    aux = root / "ditto_pytorch" / "aux_models"
    aux.mkdir()
    for i, name in enumerate(DITTO_AUX_FILES):
        (aux / name).write_bytes(bytes([i]) * 64)  # stand-ins, removed after the conversion
    shutil.copy(DATA / "tiny_hubert_interface.onnx", aux / "hubert_streaming_fix_kv.onnx")
    (root / "ditto_cfg").mkdir()
    (root / "ditto_cfg" / "v0.4_hubert_cfg_pytorch.pkl").write_bytes(pickle.dumps(ditto_cfg(), protocol=4))
    config = tmp_path / "ditto.json"
    config.write_text(json.dumps(DITTO_CONFIG))

    code, _, err = _run(capsys, "weights", "convert", "--from", "ditto", root, "--arch", "tiny", "-o", tmp_path / "no")
    assert code == 1 and "--config" in err and not (tmp_path / "no").exists()
    code, out, err = _run(capsys, "weights", "convert", "--from", "ditto", root, "--config", config,
                          "-o", tmp_path / "out", "--json")
    assert code == 0, err
    index = json.loads((tmp_path / "out" / "avatar_index.json").read_text())
    assert "preset" not in index and index["config"]["dit"]["latent_dim"] == 48
    assert index["config"]["motion"]["dims"] == [8, 16, 24, 40]
    loaded = DittoModels.from_pretrained(tmp_path / "out")
    ref = models.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())

    for name in DITTO_AUX_FILES[1:]:  # without its face models the pipeline takes --face-box (and open eyes)
        (tmp_path / "out" / "aux_models" / name).unlink()
    synthetic_portrait(tmp_path / "p.png", 320)
    synthetic_speech(tmp_path / "s.wav", 0.5)
    mp4 = tmp_path / "ditto.mp4"
    code, out, err = _run(capsys, "render", tmp_path / "p.png", tmp_path / "s.wav", "--model", "ditto", "--weights",
                          tmp_path / "out", "--face-box", "100,100,120,140", "--steps", "2", "--device", "cpu",
                          "-o", mp4, "--json", "--quiet")
    assert code == 0, err
    info = probe(mp4)
    assert info["frames"] == math.ceil(0.5 * 25) == json.loads(out)["frames"] and info["audio_streams"] == 1


def test_config_files_start_from_a_preset_and_name_their_mistakes(tmp_path):
    student = resolve({"base": "tiny", "denoising_unet": {"block_out_channels": [16, 48]}}, "hallo")
    tiny = preset("tiny", "hallo")
    assert student["denoising_unet"]["block_out_channels"] == [16, 48] != tiny["denoising_unet"]["block_out_channels"]
    assert {k: v for k, v in student["denoising_unet"].items() if k != "block_out_channels"} == \
        {k: v for k, v in tiny["denoising_unet"].items() if k != "block_out_channels"}
    assert student["reference_net"] == tiny["reference_net"] and student["settings"] == tiny["settings"]
    assert resolve({"vae": {"layers_per_block": 1}}, "osa-lcm", base="full")["vae"] == \
        {**preset("full")["vae"], "layers_per_block": 1}  # no "base": the given preset
    assert resolve("tiny", "echomimic") == preset("tiny", "echomimic")
    assert ditto_config("tiny") == ditto_config({"base": "tiny"}) and ditto_config({"base": "tiny"}) != ditto_config("full")
    path = tmp_path / "c.json"
    for text, message in (("[1, 2]", "not an object"), ("{", "not readable JSON"),
                          ('{"base": "tiny", "unet": {}}', "unknown network 'unet'"),
                          ('{"base": "huge"}', "unknown architecture 'huge'")):
        path.write_text(text)
        with pytest.raises(InputError, match=message):
            resolve(str(path), "hallo")
    with pytest.raises(InputError, match="unknown Ditto preset 'huge'"):
        ditto_config({"base": "huge"})
    with pytest.raises(InputError, match="does not build.*num_groups"):
        AvatarModels.from_config(resolve({"base": "tiny", "vae": {"block_out_channels": [6, 6, 6, 6]}}), device="meta")


def test_random_weights_of_a_config_file(tmp_path):
    path = tmp_path / "student.json"
    path.write_text(json.dumps(HALLO_CONFIG))
    models = AvatarModels.from_preset(str(path), family="hallo", device="meta")
    assert list(models.reference_net.config.block_out_channels) == [16, 48] and models.source == "random:config:hallo"
    assert AvatarModels.from_preset("tiny", family="hallo", device="meta").source == "random:tiny:hallo"
    (tmp_path / "d.json").write_text(json.dumps(DITTO_CONFIG))
    ditto = DittoModels.from_preset(str(tmp_path / "d.json"), seed=1)
    assert ditto.config["dit"]["latent_dim"] == 48 and ditto.config["motion"]["dims"] == (8, 16, 24, 40)
    assert ditto.dit.input_projection.out_features == ditto.dit.cond_projection.out_features == 48


def test_load_options_build_random_weights_of_a_config_file(tmp_path):
    from avatar_cli.load_options import LoadOptions

    path = tmp_path / "student.json"
    path.write_text(json.dumps({"base": "tiny", "reference_net": {"block_out_channels": [16, 48]},
                                "denoising_unet": {"block_out_channels": [16, 48], "motion_norm_num_groups": 8}}))
    notes = []
    pipe = LoadOptions(random_weights=True, arch=str(path), device="cpu", dtype="float32").load("osa-lcm",
                                                                                               note=notes.append)
    assert list(pipe.models.denoising_unet.config.block_out_channels) == [16, 48]
    assert pipe.models.face_locator is None and "RANDOM weights" in notes[0]


def test_render_arch_takes_a_config_file(tmp_path, capsys, monkeypatch):
    """``render --random-weights --arch FILE.json`` builds the networks at the file's widths (the DiT receives
    its latent_dim of 48, which no preset has) and renders a video ffprobe reads back."""
    from avatar_cli.bench import synthetic_portrait, synthetic_speech

    built = []
    from_config = DittoModels.from_config.__func__
    monkeypatch.setattr(DittoModels, "from_config",
                        classmethod(lambda cls, *a, **k: built.append(from_config(cls, *a, **k)) or built[-1]))
    config = tmp_path / "widths.json"
    config.write_text(json.dumps(DITTO_CONFIG))
    synthetic_portrait(tmp_path / "p.png", 128)
    synthetic_speech(tmp_path / "s.wav", 0.3)
    mp4 = tmp_path / "arch.mp4"
    code, out, err = _run(capsys, "render", tmp_path / "p.png", tmp_path / "s.wav", "--model", "ditto",
                          "--random-weights", "--arch", config, "--face-box", "32,32,64,64", "--steps", "2",
                          "--device", "cpu", "-o", mp4, "--json", "--quiet")
    assert code == 0, err
    assert len(built) == 1 and ditto_config("tiny")["dit"]["latent_dim"] != 48
    dit = built[0].dit
    assert dit.input_projection.out_features == dit.cond_projection.out_features == 48
    assert built[0].config["motion"]["dims"] == (8, 16, 24, 40) != ditto_config("tiny")["motion"]["dims"]
    info = probe(mp4)
    assert info["frames"] == math.ceil(0.3 * 25) == json.loads(out)["frames"] and info["width"] == 128


def test_render_arch_names_a_missing_or_bad_config(tmp_path, capsys, monkeypatch):
    """A missing file, a name that is neither preset nor JSON file, or a file that is not a JSON object: one
    ``avatar: error:`` line naming the fix, exit 2, no model built, no output; a config naming a network the
    model lacks: the same, from the loader."""
    from avatar_cli.bench import synthetic_portrait, synthetic_speech

    built = []
    monkeypatch.setattr(DittoModels, "from_config", classmethod(lambda cls, *a, **k: built.append(a)))
    synthetic_portrait(tmp_path / "p.png", 64)
    synthetic_speech(tmp_path / "s.wav", 0.2)
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "unet.json").write_text(json.dumps({"base": "tiny", "denoising_unet": {}}))
    mp4 = tmp_path / "never.mp4"
    for arch, message in ((tmp_path / "missing.json", "missing.json does not exist; give a JSON file"),
                          ("huge", "--arch must be full, tiny or a JSON config file"),
                          (tmp_path / "list.json", "holds a JSON list, not an object"),
                          (tmp_path / "unet.json", "unknown network 'denoising_unet' in the Ditto config")):
        code, out, err = _run(capsys, "render", tmp_path / "p.png", tmp_path / "s.wav", "--model", "ditto",
                              "--random-weights", "--arch", arch, "-o", mp4, "--quiet")
        assert code == 2 and out == "", (arch, err)
        assert err.startswith("avatar: error: ") and err.count("\n") == 1 and message in err, err
        assert "Traceback" not in err and not mp4.exists() and not built
    for command in (["bench", "--model", "ditto", "--seconds", "0.2"], ["audio", "encode", tmp_path / "s.wav", "-o",
                                                                         tmp_path / "f.safetensors"]):
        code, _, err = _run(capsys, *command, "--random-weights", "--arch", tmp_path / "missing.json")
        assert code == 2 and "missing.json does not exist" in err and err.count("\n") == 1, err
