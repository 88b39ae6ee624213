"""Identity similarity: per-frame ArcFace cosine similarity of a rendered video's face to the portrait's.

The face embedding is the one Hallo conditions on (``media/face.py``, InsightFace's ``FaceAnalysis``
with the ``hallo-face-analysis`` models), computed here with onnxruntime alone, as InsightFace
0.7.3 computes it (``insightface/app/face_analysis.py``, ``model_zoo/scrfd.py``,
``model_zoo/arcface_onnx.py``, ``utils/face_align.py``; re-implemented, no code copied):

1. SCRFD (``scrfd_10g_bnkps.onnx``) on the frame letterboxed to 640x640 (FaceAnalysis'
   ``det_size``), decoded with the rules of ``media/face_crop.py`` (score >= 0.5, NMS 0.4): the
   largest face's box and five keypoints (eyes, nose, mouth corners);
2. the similarity transform (Umeyama's least squares, with scale) taking the keypoints to ArcFace's
   112x112 template, and the frame warped with it (``cv2.warpAffine`` bilinear, border 0:
   :func:`avatar_cli.media.face_crop.warp_affine`);
3. ArcFace (``glintr100.onnx``) on the crop as RGB ``(x - 127.5) / 127.5`` (the mean and scale
   InsightFace picks for a network without its own Sub/Mul input nodes; 0 and 1 for one with them):
   a 512-d embedding;
4. cosine of each frame's embedding with the portrait's.

A frame where no face is found gets ``None`` and is left out of the mean and the minimum.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import InputError, WeightsError
from ..media import face_crop

COMPONENT = "hallo-face-analysis"
DET_FILE = "scrfd_10g_bnkps.onnx"
REC_FILE = "glintr100.onnx"
DET_SIZE = 640                   # FaceAnalysis.prepare(det_size=(640, 640)), as Hallo calls it
CROP_SIZE = 112
#: ArcFace's five-point template in the 112x112 crop (InsightFace ``face_align.arcface_dst``):
#: left eye, right eye, nose tip, left and right mouth corners, in pixels
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The similarity transform (rotation, uniform scale, translation) mapping ``src`` points onto
    ``dst`` in the least-squares sense (Umeyama 1991, eqs. 34-43; what scikit-image's
    ``SimilarityTransform.estimate`` computes for InsightFace's ``estimate_norm``).

    Args:
        src, dst: (N, 2) points, N >= 2.

    Returns:
        (2, 3) float64 matrix M with dst ~ M @ (x, y, 1).
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sv, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(cov) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    var_s = (s ** 2).sum() / len(src)
    scale = (sv * sign).sum() / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align_face(image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """(112, 112, 3) uint8 ArcFace crop of ``image`` (H, W, 3) uint8 from the five keypoints (5, 2)."""
    return face_crop.warp_affine(image, umeyama_similarity(keypoints, ARCFACE_TEMPLATE), (CROP_SIZE, CROP_SIZE))


# ----------------------------------------------------------------------------- ONNX input rule
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise IndexError
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int):
    """(field number, wire type, payload start, payload end) of a protobuf message's fields; stops
    quietly where ``buf`` is truncated."""
    pos = start
    while pos < end:
        try:
            key, pos = _varint(buf, pos)
            wire = key & 7
            if wire == 0:
                _, nxt = _varint(buf, pos)
                yield key >> 3, wire, pos, nxt
            elif wire == 2:
                length, pos = _varint(buf, pos)
                nxt = pos + length
                yield key >> 3, wire, pos, min(nxt, len(buf))
            elif wire == 1:
                nxt = pos + 8
            elif wire == 5:
                nxt = pos + 4
            else:
                return
        except IndexError:
            return
        pos = nxt


def onnx_first_node_names(path: str | Path, count: int = 8, prefix_bytes: int = 1 << 20) -> list[str]:
    """Names of the first ``count`` nodes of an ONNX graph, read from the file's first bytes with a
    minimal protobuf reader (ModelProto.graph = field 7, GraphProto.node = 1, NodeProto.name = 3)."""
    with open(path, "rb") as fh:
        buf = fh.read(prefix_bytes)
    names: list[str] = []
    for field, wire, start, end in _fields(buf, 0, len(buf)):
        if field == 7 and wire == 2:
            for gfield, gwire, gstart, gend in _fields(buf, start, end):
                if gfield == 1 and gwire == 2:
                    name = next((buf[s:e].decode("utf-8", "replace") for f, w, s, e in _fields(buf, gstart, gend)
                                 if f == 3 and w == 2), "")
                    names.append(name)
                    if len(names) >= count:
                        return names
            break
    return names


def arcface_input_norm(path: str | Path) -> tuple[float, float]:
    """(mean, std) ArcFace inputs are normalised with: (0, 1) when the graph's first 8 nodes include
    Sub and Mul nodes (the network normalises itself, MXNet exports), else (127.5, 127.5)
    (InsightFace's ``ArcFaceONNX.__init__`` rule)."""
    names = onnx_first_node_names(path)
    sub = any(n.startswith(("Sub", "_minus")) for n in names)
    mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if sub and mul else (127.5, 127.5)


# ----------------------------------------------------------------------------- the models
@dataclass
class FaceEmbedder:
    """SCRFD + ArcFace in onnxruntime. ``det`` and ``rec`` are ``InferenceSession``s (or anything
    with ``run`` / ``get_inputs``); ``rec_mean`` / ``rec_std`` ArcFace's input normalisation."""

    det: object
    rec: object
    rec_mean: float = 127.5
    rec_std: float = 127.5

    @classmethod
    def from_dir(cls, models_dir: str | Path, device: str = "cpu") -> "FaceEmbedder":
        """Load ``scrfd_10g_bnkps.onnx`` and ``glintr100.onnx`` from ``models_dir``.

        Raises:
            WeightsError: a file is missing (one line naming ``avatar weights download hallo-face-analysis``).
            InputError: onnxruntime is not installed.
        """
        models_dir = Path(models_dir)
        for name in (DET_FILE, REC_FILE):
            if not (models_dir / name).is_file():
                raise WeightsError(f"identity similarity needs {models_dir / name}: run "
                                   f"'avatar weights download {COMPONENT}'")
        try:
            import onnxruntime as ort
        except ImportError:
            raise InputError("identity similarity needs onnxruntime: pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        providers = face_crop._providers(ort, device)
        det, rec = (ort.InferenceSession(str(models_dir / n), sess_options=options, providers=providers)
                    for n in (DET_FILE, REC_FILE))
        mean, std = arcface_input_norm(models_dir / REC_FILE)
        return cls(det, rec, mean, std)

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SCRFD faces of (H, W, 3) uint8 RGB: (dets (N, 5) x1, y1, x2, y2, score; kps (N, 5, 2)) in
        image pixels, best score first."""
        det_image, det_scale = face_crop.letterbox(image, DET_SIZE)
        name = self.det.get_inputs()[0].name
        outputs = self.det.run(None, {name: face_crop.det_blob(det_image)})
        return face_crop.scrfd_decode(outputs, det_scale, size=DET_SIZE)

    def embed_crop(self, crop: np.ndarray) -> np.ndarray:
        """ArcFace embedding (D,) float32 of a (112, 112, 3) uint8 RGB crop."""
        x = (crop.astype(np.float32) - self.rec_mean) / self.rec_std
        name = self.rec.get_inputs()[0].name
        return np.asarray(self.rec.run(None, {name: np.ascontiguousarray(x.transpose(2, 0, 1)[None])})[0][0],
                          dtype=np.float32).reshape(-1)

    def embed(self, image: np.ndarray) -> np.ndarray | None:
        """Embedding of the largest face in (H, W, 3) uint8 RGB, or None when none is found."""
        dets, kps = self.detect(image)
        if len(dets) == 0:
            return None
        area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
        return self.embed_crop(align_face(image, kps[int(np.argmax(area))]))


def models_folder(weights_dir: str | Path | None = None) -> Path | None:
    """Where ``hallo-face-analysis``'s ``face_analysis/models`` is: under ``weights_dir`` (as
    ``--local-dir`` writes it, ``<dir>/hallo-face-analysis/face_analysis``, or a weights folder's
    ``face_analysis``), else the installed manifest entry; None if nowhere."""
    from ..weights import find_folder

    if weights_dir is not None and (Path(weights_dir) / COMPONENT / "face_analysis").is_dir():
        return Path(weights_dir) / COMPONENT / "face_analysis" / "models"
    root = find_folder(weights_dir, "face_analysis", COMPONENT, "face_analysis")
    return None if root is None else Path(root) / "models"


def _frames(frames) -> Iterable[np.ndarray]:
    items = [frames] if isinstance(frames, np.ndarray) else frames
    for item in items:
        a = np.asarray(item)
        if a.dtype != np.uint8 or a.shape[-1] != 3 or a.ndim not in (3, 4):
            raise InputError(f"frames must be uint8 (H, W, 3) RGB, got {a.dtype} {a.shape}")
        yield from ([a] if a.ndim == 3 else list(a))


def identity_similarity(frames, portrait: np.ndarray, weights_dir: str | Path | None = None, *,
                        embedder: FaceEmbedder | None = None, device: str = "cpu", every: int = 1) -> dict:
    """Per-frame ArcFace cosine similarity to the portrait.

    Args:
        frames: uint8 RGB frames: an (N, H, W, 3) array or an iterable of (H, W, 3) frames / stacks.
        portrait: (H, W, 3) uint8 RGB.
        weights_dir: where ``hallo-face-analysis`` is (see :func:`models_folder`); ignored with ``embedder``.
        embedder: a :class:`FaceEmbedder` to reuse (tests pass one with tiny ONNX models).
        device: "cpu", or "cuda" where onnxruntime offers it.
        every: evaluate every ``every``-th frame (1 = all; each evaluated frame runs SCRFD at 640
            and a ResNet-100 ArcFace, the slow part on a CPU; not measured with the real models).

    Returns:
        ``{"mean": float | None, "min": float | None, "per_frame": [float | None, ...],
        "frame_indices": [int, ...], "frames": n, "frames_with_face": k}``: cosine in [-1, 1]
        (1 = the same embedding) of each evaluated frame (its index in ``frame_indices``); None for
        a frame without a detected face; mean / min over the frames with one (None if none).

    Raises:
        WeightsError: the models are not downloaded (names ``avatar weights download hallo-face-analysis``).
        InputError: no face in the portrait, malformed frames, or onnxruntime missing.
    """
    if embedder is None:
        folder = models_folder(weights_dir)
        if folder is None:
            raise WeightsError(f"identity similarity needs the ArcFace models: run 'avatar weights download {COMPONENT}'")
        embedder = FaceEmbedder.from_dir(folder, device)
    portrait = np.asarray(portrait)
    if portrait.dtype != np.uint8 or portrait.ndim != 3 or portrait.shape[-1] != 3:
        raise InputError(f"the portrait must be uint8 (H, W, 3) RGB, got {portrait.dtype} {portrait.shape}")
    ref = embedder.embed(portrait)
    if ref is None:
        raise InputError("no face found in the portrait: identity similarity needs one")
    ref = ref / np.linalg.norm(ref)
    if every < 1:
        raise InputError(f"identity similarity: every must be >= 1, not {every}")
    per_frame: list[float | None] = []
    indices: list[int] = []
    for index, frame in enumerate(_frames(frames)):
        if index % every:
            continue
        indices.append(index)
        emb = embedder.embed(frame)
        per_frame.append(None if emb is None else float(np.dot(ref, emb / np.linalg.norm(emb))))
    found = [v for v in per_frame if v is not None]
    return {"mean": float(np.mean(found)) if found else None, "min": float(min(found)) if found else None,
            "per_frame": per_frame, "frame_indices": indices, "frames": len(per_frame),
            "frames_with_face": len(found)}
