"""bf16 against fp32 for the dual U-Net family's networks: the numbers behind ``avatar_cli/precision.py``'s
U-Net defaults (``scripts/bf16_quality.py --family unet`` runs this).

Weights with realistic scales, from the equivalence fixtures in ``tests/data`` (provenance there):

- ``hallo_tiny.safetensors`` (Hallo's tiny Net, seeded N(0, 0.05) weights; ``tests/models/test_hallo.py``)
  and ``echomimic_tiny.safetensors`` (EchoMimic's tiny U-Nets, grid-seeded weights in [-0.1, 0.1];
  ``tests/models/test_echomimic.py``): the reference net's features and one denoising-U-Net evaluation on
  the recorded inputs, with the reference net, the U-Net or both under bf16 autocast. Reported: max abs
  error of the reference features and of the U-Net's prediction, and the prediction's PSNR with the fp32
  prediction's range as the peak;
- ``echomimic_parts.safetensors``'s Whisper encoder (``tests/models/test_whisper_features.py``): the
  features of ``speech_espeak.wav``, max abs and relative error;
- the VAE (tiny preset) and TAESD (tiny preset) with grid-seeded weights (``tests/models/echomimic_weights.py``,
  seed 7 / 8), on latents made from the fixture's prediction: the decoded frame's PSNR (peak 1, frames
  mapped from [-1, 1] to [0, 1]); the VAE encoder's latents max abs error on the decoded frame.

Full-size random weights (torch's default initialisation): ``scripts/bf16_speed.py --family unet`` renders
osa-lcm and echomimic-acc in both formats and reports the final frame's PSNR and the latents' max error.

Usage: ``PYTHONPATH=. python scripts/bf16_quality.py --family unet`` (about a minute on 2 cores). Prints JSON.
"""

from __future__ import annotations

import json
import sys
import wave
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from avatar_cli.convert import map_echomimic_state, map_hallo_state  # noqa: E402
from avatar_cli.models.bundle import AvatarModels  # noqa: E402
from avatar_cli.models.presets import preset  # noqa: E402
from avatar_cli.precision import NetworkPrecision, psnr, run_in_format  # noqa: E402
from tests.models.echomimic_weights import grid_state  # noqa: E402

DATA = ROOT / "tests/data"
CPU = torch.device("cpu")
BF16 = NetworkPrecision(autocast=torch.bfloat16)
BF16_CL = NetworkPrecision(autocast=torch.bfloat16, channels_last=True)
FP32 = NetworkPrecision()


def _max_err(a, b) -> float:
    if isinstance(a, dict):
        return max(_max_err(a[k], b[k]) for k in a)
    return float((a.float() - b.float()).abs().max())


def _set(obj, method, prec):
    run_in_format(obj, method, prec, CPU)


def hallo_models():
    raw = load_file(DATA / "hallo_tiny.safetensors")
    scale = raw["meta.state_int8_scale"].item()
    state = {k[len("state."):]: (v.float() * scale if v.dtype == torch.int8 else v)
             for k, v in raw.items() if k.startswith("state.")}
    models = AvatarModels.from_preset("tiny", family="hallo", seed=99)
    for name, part in map_hallo_state(state).items():
        getattr(models, name).load_state_dict(part, strict=True)
    t = {k: v for k, v in raw.items() if not k.startswith("state.")}
    return models.reference_net.eval(), models.denoising_unet.eval(), t


def hallo_case():
    ref_net, unet, t = hallo_models()
    tokens = t["out.face_tokens"]

    def run():
        reference = ref_net.extract_features(t["in.ref_latents"], tokens)
        motion = ref_net.extract_features(t["in.motion_latents"], tokens)
        masks = {r: t[f"in.mask_{r}"] for r in ("full", "face", "lip")}
        out = unet(t["in.sample"], t["in.timestep"], tokens, t["out.audio_tokens"], reference, motion,
                   conditioning_features=t["out.mask_cond_fea"], region_masks=masks,
                   region_scales=tuple(t["in.motion_scale"].tolist()))
        return reference, out
    return ref_net, unet, run, t["in.sample"], int(t["in.timestep"].reshape(-1)[0])


def echomimic_case():
    from tests.models.test_echomimic import SEEDS  # noqa: F401  (the fixture's seeds)
    from tests.models.test_echomimic import echomimic_states
    from avatar_cli.models.denoising_unet import DenoisingUNet3D
    from avatar_cli.models.face_locator import FaceLocator
    from avatar_cli.models.reference_net import ReferenceNet
    from avatar_cli.sampling.guidance import Conditions

    cfg = preset("tiny", "echomimic")
    nets = {"reference_net": ReferenceNet(**cfg["reference_net"]),
            "denoising_unet": DenoisingUNet3D(**cfg["denoising_unet"]), "face_locator": FaceLocator(**cfg["face_locator"])}
    states = echomimic_states()
    motion = {k: v for k, v in states["denoising_unet"].items() if ".motion_modules." in k}
    unet2d = {k: v for k, v in states["denoising_unet"].items() if ".motion_modules." not in k}
    for name, part in map_echomimic_state(states["reference_unet"], unet2d, motion, states["face_locator"]).items():
        nets[name].load_state_dict(part, strict=True)
    t = load_file(DATA / "echomimic_tiny.safetensors")
    ref_net, unet = nets["reference_net"].eval(), nets["denoising_unet"].eval()

    def run():
        reference = ref_net.extract_features(t["in.ref_latents"], None)
        frames = t["in.sample"].shape[2]
        locator = t["out.face_locator"].expand(-1, -1, frames, -1, -1)
        c = Conditions(torch.zeros(1, 0, 32), t["in.audio"], reference, None, locator, None)
        out = unet(t["in.sample"], t["in.timestep"], None, c.audio_embeds, c.reference_features, None,
                   conditioning_features=c.conditioning_features)
        return reference, out
    return ref_net, unet, run, t["in.sample"], int(t["in.timestep"].reshape(-1)[0])


def _seeded(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    state = grid_state(shapes, seed)
    for k, v in net.state_dict().items():  # norms' weights around 1, as trained norms are
        if k.endswith(".weight") and v.dim() == 1:
            state[k] = 1 + state[k]
    net.load_state_dict(state)
    return net.eval()


def seeded_vae():
    """The tiny preset's VAE with grid-seeded weights (seed 7): the frames of the U-Net cases."""
    from diffusers import AutoencoderKL

    return _seeded(AutoencoderKL(**preset("tiny")["vae"]), 7)


@torch.no_grad()
def unet_cases() -> tuple[dict, dict]:
    """Per fixture: reference net / U-Net / both under bf16 autocast; the prediction's errors, and the
    frame: the one-step x0 estimate, scaled to unit variance as SD latents are, decoded by
    :func:`seeded_vae` in fp32 (and with the VAE decoder bf16 too: every default network in bf16)."""
    from diffusers import DDIMScheduler

    report, x0s = {}, {}
    vae = seeded_vae()
    for name, case in {"hallo_tiny": hallo_case, "echomimic_tiny": echomimic_case}.items():
        ref_net, unet, run, sample, timestep = case()
        ref_feats, ref_out = run()
        alpha = float(DDIMScheduler.from_config(preset("tiny")["scheduler"]).alphas_cumprod[timestep])

        def x0(prediction):
            return ((sample - (1 - alpha) ** 0.5 * prediction) / alpha ** 0.5)[0].permute(1, 0, 2, 3)

        scale = float(x0(ref_out).std())

        def frame(prediction, decoder=FP32):
            _set(vae.decoder, "forward", decoder)
            try:
                return (vae.decode(x0(prediction) / scale).sample.clamp(-1, 1) + 1) / 2
            finally:
                _set(vae.decoder, "forward", FP32)

        ref_frame = frame(ref_out)
        row = {}
        for label, (r, u) in {"reference_net bf16": (BF16, FP32), "denoising_unet bf16": (FP32, BF16),
                              "denoising_unet bf16+channels_last": (FP32, BF16_CL), "both bf16": (BF16, BF16)}.items():
            _set(ref_net, "extract_features", r), _set(unet, "forward", u)
            try:
                feats, out = run()
            finally:
                _set(ref_net, "extract_features", FP32), _set(unet, "forward", FP32)
            peak = float(ref_out.max() - ref_out.min())
            row[label] = {"max_abs_reference_features": round(_max_err(feats, ref_feats), 5),
                          "max_abs_prediction": round(_max_err(out, ref_out), 5),
                          "prediction_psnr_db": round(psnr(out / peak, ref_out / peak), 2),
                          "frame_psnr_db": round(psnr(frame(out), ref_frame), 2)}
            if label == "both bf16":
                row["both bf16, VAE decoder bf16+channels_last"] = {
                    "frame_psnr_db": round(psnr(frame(out, BF16_CL), ref_frame), 2)}
        report[name] = row
        x0s[name] = x0(ref_out)  # the one-step x0 estimate at the recorded timestep, for the decoder cases
    return report, x0s


@torch.no_grad()
def decoder_cases(x0s: dict) -> dict:
    from diffusers import AutoencoderTiny

    vae = seeded_vae()
    taesd = _seeded(AutoencoderTiny(**preset("tiny")["taesd"]), 8)
    report = {}
    for name, latents in x0s.items():
        latents = latents / latents.std()  # the SD latent scale (unit variance after the scaling factor)
        row = {}
        for net_name, net, decode in (("vae_decoder", vae, lambda z: vae.decode(z).sample),
                                      ("taesd", taesd, lambda z: taesd.decode(z).sample)):
            ref = decode(latents).clamp(-1, 1)
            for label, prec in {"bf16": BF16, "bf16+channels_last": BF16_CL}.items():
                _set(net.decoder, "forward", prec)
                try:
                    got = decode(latents).clamp(-1, 1)
                finally:
                    _set(net.decoder, "forward", FP32)
                row[f"{net_name} {label}"] = {"frame_psnr_db": round(psnr((got + 1) / 2, (ref + 1) / 2), 2),
                                              "max_abs": round(_max_err(got, ref), 5)}
        frame = vae.decode(latents).sample.clamp(-1, 1)
        ref = vae.encode(frame).latent_dist.mean
        for label, prec in {"bf16": BF16, "bf16+channels_last": BF16_CL}.items():
            _set(vae.encoder, "forward", prec)
            try:
                got = vae.encode(frame).latent_dist.mean
            finally:
                _set(vae.encoder, "forward", FP32)
            row[f"vae_encoder {label}"] = {"max_abs_latents": round(_max_err(got, ref), 5),
                                           "max_abs_rel": round(_max_err(got, ref) / float(ref.abs().max()), 5)}
        report[f"latents of {name}"] = row
    return report


@torch.no_grad()
def whisper_case() -> dict:
    from avatar_cli.models.whisper_features import WhisperFeatures
    from tests.models.test_whisper_features import _decoder_state
    import tempfile

    with safe_open(str(DATA / "echomimic_parts.safetensors"), "pt") as f:
        dims = json.loads(f.metadata()["dims"])
    tensors = load_file(str(DATA / "echomimic_parts.safetensors"))
    state = {k[len("ckpt."):]: v for k, v in tensors.items() if k.startswith("ckpt.")}
    state.update(_decoder_state(dims))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "whisper.pt"
        torch.save({"dims": dict(dims), "model_state_dict": state}, path)
        features = WhisperFeatures.from_openai_checkpoint(path)
    with wave.open(str(DATA / "speech_espeak.wav")) as w:
        speech = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
    ref = features.encode(speech)
    _set(features, "_encode_window", BF16)
    got = features.encode(speech)
    _set(features, "_encode_window", FP32)
    return {"whisper (echomimic_parts) bf16": {"max_abs": round(_max_err(got, ref), 5),
                                                "max_abs_rel": round(_max_err(got, ref) / float(ref.abs().max()), 5)}}


def main() -> dict:
    torch.manual_seed(0)
    unets, x0s = unet_cases()
    return {"unet_fixtures": unets, "decoders_seeded": decoder_cases(x0s), "audio": whisper_case()}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
