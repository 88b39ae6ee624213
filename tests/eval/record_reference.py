"""Record the metric reference values in tests/data/eval_reference.npz (run once, by hand).

Runs the reference implementations in a throwaway environment, never in the test suite:

    python3.11 -m venv venv && venv/bin/pip install torch==2.13.0 torch-fidelity==0.4.0 \
        clean-fid==0.1.35 torchmetrics==1.9.0 scipy
    PYTHONPATH=STUB:REPO venv/bin/python tests/eval/record_reference.py OUR_FVD_PY I3DPT_PY OUT.npz

STUB holds a ``sitecustomize.py`` that stubs ``torchvision`` (imported at module level by
torch-fidelity, torchmetrics and clean-fid, unused on these code paths; the PyPI torchvision does
not load against the CPU torch). OUR_FVD_PY is universome/fvd-comparison's ``our_fvd.py`` (StyleGAN-V's
Fréchet distance code, as LatentSync's ``eval/fvd.py`` also has it); I3DPT_PY is
hassony2/kinetics_i3d_pytorch's ``src/i3dpt.py`` (the network StyleGAN-V's ``i3d_torchscript.pt`` was
scripted from). tests/data/README.md says what each array is.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_weights import seeded_state  # noqa: E402


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(our_fvd_path: str, i3dpt_path: str, out: str) -> None:
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
    from cleanfid.fid import frechet_distance as cleanfid_frechet
    from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid

    our_fvd = _load("our_fvd", our_fvd_path)
    i3dpt = _load("i3dpt", i3dpt_path)

    # the network's key layout from torch-fidelity itself, then seeded weights written to a file
    shapes = {}
    orig = tf_inception.FeatureExtractorInceptionV3.load_state_dict
    tf_inception.load_state_dict_from_url = lambda *a, **k: None
    tf_inception.FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, strict=True: None
    probe = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    tf_inception.FeatureExtractorInceptionV3.load_state_dict = orig
    shapes = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    weights = Path(out).with_suffix(".weights.pth")
    torch.save(seeded_state(shapes, seed=0), weights)

    rng = np.random.default_rng(19)
    frames_a = rng.integers(0, 256, size=(6, 32, 40, 3), dtype=np.uint8)
    frames_b = (rng.integers(0, 192, size=(5, 32, 40, 3)) + 32).astype(np.uint8)
    record = {"fid_frames_a": frames_a, "fid_frames_b": frames_b}
    for antialias, tag in ((True, "antialias"), (False, "tf1")):
        metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights),
                                          antialias=antialias)
        metric.update(torch.from_numpy(frames_a).permute(0, 3, 1, 2), real=True)
        metric.update(torch.from_numpy(frames_b).permute(0, 3, 1, 2), real=False)
        record[f"fid_{tag}"] = np.float64(metric.compute().double().item())
        with torch.no_grad():
            feats = metric.inception(torch.from_numpy(frames_a).permute(0, 3, 1, 2))
        record[f"features_a_{tag}"] = feats.float().numpy()
    weights.unlink()

    # Fréchet distance of two Gaussian feature sets, by three reference codes
    x = rng.normal(size=(64, 16))
    y = 0.7 * rng.normal(size=(64, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    mu1, s1 = x.mean(0), np.cov(x, rowvar=False)
    mu2, s2 = y.mean(0), np.cov(y, rowvar=False)
    record.update(
        frechet_x=x, frechet_y=y,
        frechet_cleanfid=np.float64(cleanfid_frechet(mu1, s1, mu2, s2)),
        frechet_stylegan_v=np.float64(our_fvd.compute_fvd(x, y)),
        frechet_torchmetrics=np.float64(_compute_fid(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2))).item()),
    )
    # hassony2's I3D (400 classes) with seeded weights on one 16-frame clip, resized to 224 (bilinear,
    # align_corners=False) and mapped to [-1, 1]: the logits, FVD's features
    i3d = i3dpt.I3D(num_classes=400).eval()
    i3d.load_state_dict(seeded_state({k: tuple(v.shape) for k, v in i3d.state_dict().items()}, seed=11))
    clip = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False) / 127.5 - 1
    with torch.no_grad():
        _, logits = i3d(x.permute(1, 0, 2, 3)[None])
    record.update(i3d_clip=clip, i3d_logits=logits[0].numpy())

    np.savez_compressed(out, **record)
    for k, v in record.items():
        print(k, v.shape if v.ndim else v)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
