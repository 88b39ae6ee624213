"""Speech on standard input (`avatar render portrait.png - --stream`): seconds from the first bytes written to
the first 80 ms PCM chunk out of ``pcm_chunks("-")``, with a slow writer (0.1 s of speech every 0.1 s, 6 s in
all): WAV at 16 kHz mono (probed and with --input-format wav), raw s16le, WAV at 48 kHz stereo, MP3, FLAC.
Run from the repository root: ``PYTHONPATH=. python scripts/stdin_first_chunk.py`` (numbers in docs/ditto.md)."""
import io, os, sys, threading, time, wave
import numpy as np
from avatar_cli.media.stream import pcm_chunks

def wav_bytes(samples, rate):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate); w.writeframes(samples.tobytes())
    return buf.getvalue()

def measure(data, header, piece, input_format=None, gap=0.1):
    r, w = os.pipe()
    t0 = {}
    def writer():
        with os.fdopen(w, "wb", buffering=0) as f:
            t0["first"] = time.perf_counter()
            f.write(data[:header + piece])
            pos = header + piece
            while pos < len(data):
                time.sleep(gap)
                f.write(data[pos:pos + piece]); pos += piece
            t0["done"] = time.perf_counter()
    th = threading.Thread(target=writer); th.start()
    first = None; out = []
    with os.fdopen(r, "rb", buffering=0) as stdin:
        for chunk in pcm_chunks("-", input_format, stdin=stdin):
            if first is None: first = time.perf_counter()
            out.append(chunk)
    th.join()
    return first - t0["first"], t0["done"] - t0["first"], np.concatenate(out)

rate = 16000
rng = np.random.default_rng(0)
pcm = (rng.standard_normal(rate * 6) * 3000).astype("<i2")
for name, fmt, data, header, piece in [
        ("wav 16k, probed", None, wav_bytes(pcm, rate), 44, rate // 10 * 2),
        ("wav 16k, --input-format wav", "wav", wav_bytes(pcm, rate), 44, rate // 10 * 2),
        ("raw s16le (--input-format s16le)", "s16le", pcm.tobytes(), 0, rate // 10 * 2)]:
    ffd, total, got = measure(data, header, piece, fmt)
    print(f"{name}: first chunk after {ffd:.3f} s of {total:.2f} s written; samples equal: "
          f"{np.array_equal((got * 32768).astype('<i2'), pcm)}", flush=True)
import subprocess, tempfile, imageio_ffmpeg
FF = imageio_ffmpeg.get_ffmpeg_exe()
tmp = tempfile.mkdtemp()
open(f"{tmp}/pd.wav", "wb").write(wav_bytes(pcm, rate))
for ext, extra in [("wav48", ["-ar", "48000", "-ac", "2", "-f", "wav"]), ("mp3", ["-f", "mp3"]), ("flac", ["-f", "flac"])]:
    out = f"{tmp}/pd.{ext}"
    subprocess.run([FF, "-y", "-loglevel", "error", "-i", f"{tmp}/pd.wav", *extra, out], check=True)
    data = open(out, "rb").read()
    piece = len(data) // 60
    ffd, total, got = measure(data, 0, piece, None)
    print(f"{ext} (probed): first chunk after {ffd:.3f} s of {total:.2f} s written; {len(got)} samples", flush=True)
