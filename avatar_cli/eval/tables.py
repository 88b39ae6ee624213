"""``avatar eval``'s batch summaries: a markdown table and a plot of the per-video metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def markdown_table(rows: list[dict], summary: dict) -> str:
    """A markdown summary: one row per video (Sync-C, Sync-D, offset, face, error) and the means."""
    lines = ["| job | video | Sync-C ↑ | Sync-D ↓ | offset (frames) | face | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {_fmt(r.get('job'))} | {Path(r['video']).name} | {_fmt(r.get('sync_c'))} | "
                     f"{_fmt(r.get('sync_d'))} | {_fmt(r.get('offset_frames'))} | {r.get('face', '-')} | "
                     f"{r.get('error', '')} |")
    lines.append(f"| **mean** | {summary['evaluated']} of {summary['videos']} | {_fmt(summary['sync_c_mean'])} | "
                 f"{_fmt(summary['sync_d_mean'])} | |{_fmt(summary['offset_abs_mean'])}| mean | | |")
    extra = [f"{name} {_fmt(summary.get(key))}" for name, key in (("FID", "fid"), ("FVD", "fvd"),
                                                                 ("identity", "identity_mean")) if key in summary
             and summary.get(key) is not None]
    if extra:
        lines += ["", ", ".join(extra)]
    return "\n".join(lines) + "\n"


def plot_batch(rows: list[dict], path: str | Path) -> None:
    """A PNG scatter of Sync-C against Sync-D, one point per evaluated video (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter([r["sync_d"] for r in ok], [r["sync_c"] for r in ok])
    for r in ok:
        ax.annotate(Path(r["video"]).stem, (r["sync_d"], r["sync_c"]), fontsize=7)
    ax.set_xlabel("Sync-D (lower is better)")
    ax.set_ylabel("Sync-C (higher is better)")
    ax.set_title(f"avatar eval: {len(ok)} videos", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
