"""`avatar batch`: many renders from one jobs file, the models loaded once.

A jobs file is CSV (header ``image,audio,output`` plus optional per-job option columns; the header
may be left out when the first field is an existing image, then the three columns come in that
order) or JSON Lines (one object per line),
or ``-`` for standard input. Relative paths are resolved against the jobs file's folder (standard
input: the working directory). Everything is checked before any model loads; a bad jobs file is a
usage error (exit 2) naming its row and column.

Each finished job is appended to a ledger (``JOBS.ledger.jsonl`` beside the jobs file) with its
output's sha256, flushed and synced; ``--resume`` skips a job whose output exists and matches the
ledger and renders again one whose output is missing or altered. ``--shard I/N`` takes the jobs
whose index (0-based) mod N is I, so N machines split one jobs file without coordination.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import AvatarError, InputError
from .weights import sha256_file
from . import render_options
from .options import RenderOptions

REQUIRED = ("image", "audio", "output")


# Per-job option columns: every render option (``render_options.py``), by its option name.
COLUMNS = (*REQUIRED, "audio_features", *render_options.COLUMNS)


@dataclass
class Job:
    """One render: ``index`` (0-based, the shard key), ``where`` (e.g. "jobs.csv row 3") for messages."""

    index: int
    where: str
    image: Path
    audio: Path
    output: Path
    options: dict = field(default_factory=dict)
    audio_features: Path | None = None
    row: dict = field(default_factory=dict)  # the row as read (column -> text), paths made absolute

    def render_options(self, base: RenderOptions) -> RenderOptions:
        return replace(base, **self.options)


def _rows(text: str, name: str, base: Path) -> Iterator[tuple[str, dict]]:
    """(where, row dict) for a CSV or JSON Lines text. A CSV without a header is recognised by its
    first field naming an existing file (a portrait)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"jobs file {name} is empty; it needs rows of image,audio,output")
    if lines[0].lstrip().startswith("{"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{name} line {number}: not JSON ({err.msg}); write one object per line") from None
            if not isinstance(row, dict):
                raise InputError(f"{name} line {number}: not a JSON object; write one object per line")
            yield f"{name} line {number}", {str(k): "" if v is None else v for k, v in row.items()}
        return
    reader = csv.reader(io.StringIO(text))
    first = next(reader)
    lead = first[0].strip() if first else ""
    # A header names columns; a headerless first row holds paths (an image file, even a missing one).
    has_header = any(f.strip() in COLUMNS for f in first) or not (
        lead and ((Path(lead) if Path(lead).is_absolute() else base / lead).is_file() or Path(lead).suffix))
    header = [h.strip() for h in first] if has_header else list(REQUIRED)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(f"{name} header lacks the column(s) {', '.join(missing)}; it needs image,audio,output")
    unknown = [c for c in header if c not in COLUMNS]
    if unknown:
        raise InputError(f"{name} header has unknown column(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}")
    rows = reader if has_header else [first, *reader]
    for number, values in enumerate(rows, 2 if has_header else 1):
        if not any(v.strip() for v in values):
            continue
        if len(values) > len(header):
            raise InputError(f"{name} row {number}: {len(values)} fields for {len(header)} columns; quote commas")
        yield f"{name} row {number}", dict(zip(header, [v.strip() for v in values] + [""] * (len(header) - len(values))))


def read_jobs(source: str | Path, defaults: RenderOptions | None = None) -> list[Job]:
    """Parse and check a jobs file (``"-"``: standard input).

    ``defaults``: the command line's render options; each row's options are applied to them and
    checked (range, choice), so a bad value is a usage error before any model loads.

    Raises:
        InputError: missing or empty file, wrong header, a missing value, a bad option value, a
            duplicate output, or an output folder that is missing or not writable; the message
            names the row and column.
    """
    import sys

    if str(source) == "-":
        text, name, base = sys.stdin.read(), "standard input", Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"jobs file {path} does not exist; give a CSV or JSON Lines file, or - for stdin")
        text, name, base = path.read_text(), path.name, path.resolve().parent
    jobs, outputs = [], {}
    for index, (where, row) in enumerate(_rows(text, name, base)):
        for column in REQUIRED:
            if not str(row.get(column, "")).strip():
                raise InputError(f"{where}, column {column}: missing; every job needs image, audio and output")
        unknown = [c for c in row if c not in COLUMNS]
        if unknown:
            raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}")
        resolve = lambda p: (base / p) if not Path(p).is_absolute() else Path(p)  # noqa: E731
        output = resolve(str(row["output"]))
        key = os.path.normpath(output.absolute())
        if key in outputs:
            raise InputError(f"{where}, column output: {output} is also the output of {outputs[key]}; "
                             f"give each job its own output")
        outputs[key] = where
        if not output.parent.is_dir():
            raise InputError(f"{where}, column output: folder {output.parent} does not exist; create it first")
        if not os.access(output.parent, os.W_OK):
            raise InputError(f"{where}, column output: folder {output.parent} is not writable")
        options = {}
        for column in render_options.COLUMNS:
            value = row.get(column, "")
            if str(value).strip():
                try:
                    attr, options[attr] = render_options.column_value(column, value)
                    attr_value = options[attr]
                except (ValueError, InputError):
                    raise InputError(f"{where}, column {column}: {value!r} is not a valid {column}") from None
                if defaults is not None:
                    try:
                        replace(defaults, **{attr: attr_value}).validate()
                    except InputError as err:
                        raise InputError(f"{where}, column {column}: {err}") from None
        if defaults is not None:
            try:
                replace(defaults, **options).validate()
            except InputError as err:
                raise InputError(f"{where}: {err}") from None
        features = str(row.get("audio_features", "")).strip()
        absolute = {k: v for k, v in row.items() if str(v).strip()}
        for column in ("image", "audio", "output", "audio_features", "face_embedding"):
            value = str(absolute.get(column, "")).strip()
            if value and not (column == "face_embedding" and value in ("auto", "none")):
                absolute[column] = str(resolve(value).absolute())
        jobs.append(Job(index, where, resolve(str(row["image"])), resolve(str(row["audio"])), output, options,
                        resolve(features) if features else None, absolute))
    return jobs


def check_outputs(jobs: list[Job], overwrite: bool, resume: bool) -> None:
    """Refuse to replace an existing output unless ``overwrite`` or ``resume`` (which replaces only
    outputs that are not finished and unchanged). Raises InputError naming the row."""
    if overwrite or resume:
        return
    for job in jobs:
        if job.output.exists():
            raise InputError(f"{job.where}, column output: {job.output} exists; pass --resume or --overwrite")


def select_shard(jobs: list[Job], shard: str | None) -> list[Job]:
    """Jobs whose index mod N == I for ``shard`` = "I/N" (None: all)."""
    if shard is None:
        return jobs
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise InputError(f"--shard takes I/N such as 0/4 (got {shard!r})") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard I/N needs 0 <= I < N (got {shard})")
    return [job for job in jobs if job.index % n == i]


def default_ledger(jobs: str | Path) -> Path:
    """JOBS.ledger.jsonl beside the jobs file (standard input: stdin.ledger.jsonl here)."""
    if str(jobs) == "-":
        return Path("stdin.ledger.jsonl")
    path = Path(jobs)
    return path.with_name(path.stem + ".ledger.jsonl")


class Ledger:
    """Append-only JSON Lines record of finished jobs: output path and sha256. Each entry is one
    ``write`` on a file opened with O_APPEND, then fsync: shards running side by side can share it,
    and a crash leaves at most a cut last line (ignored when read)."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if entry.get("status") == "ok":
                    self.done[entry["output"]] = entry["sha256"]

    def finished(self, output: Path) -> bool:
        """The output exists and is the file this ledger recorded."""
        key = str(output.resolve())
        return key in self.done and output.is_file() and sha256_file(output) == self.done[key]

    def record(self, job: Job, seconds: float) -> None:
        digest = sha256_file(job.output)
        entry = {"job": job.index, "where": job.where, "output": str(job.output.resolve()), "sha256": digest,
                 "status": "ok", "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime())}
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.done[entry["output"]] = digest


@dataclass
class JobResult:
    job: int
    status: str  # ok | failed | skipped
    output: str
    seconds: float = 0.0
    rtf: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return dict(vars(self))


def run(pipe, jobs: list[Job], base: RenderOptions, ledger: Ledger, resume: bool = False, fail_fast: bool = False,
        report: Callable[[JobResult, int, int], None] = lambda r, i, n: None) -> list[JobResult]:
    """Render the jobs one after another with one pipeline; a failed job does not stop the others
    (unless ``fail_fast``). KeyboardInterrupt propagates (the running job leaves no file)."""
    from .options import prepare_job

    from . import interrupt

    results = []
    for position, job in enumerate(jobs, 1):
        interrupt.check()
        if resume and ledger.finished(job.output):
            result = JobResult(job.index, "skipped", str(job.output))
        else:
            start = time.perf_counter()
            try:
                options = job.render_options(base)
                prepared = prepare_job(job.image, job.audio, job.output, options, overwrite=True,
                                       audio_features=job.audio_features)
                rendered = pipe.render_job(prepared)
                ledger.record(job, time.perf_counter() - start)
                result = JobResult(job.index, "ok", str(job.output), round(time.perf_counter() - start, 3),
                                   rendered.rtf)
            except AvatarError as err:
                result = JobResult(job.index, "failed", str(job.output), round(time.perf_counter() - start, 3),
                                   error=f"{job.where}: {err}")
            except Exception as err:  # noqa: BLE001 - an unexpected failure (e.g. CUDA out of memory) fails one job
                lines = str(err).strip().splitlines()
                result = JobResult(job.index, "failed", str(job.output), round(time.perf_counter() - start, 3),
                                   error=f"{job.where}: {type(err).__name__}: {lines[0] if lines else 'no message'}")
                import torch

                if torch.cuda.is_available():  # give an out-of-memory job's cached blocks back
                    torch.cuda.empty_cache()
        results.append(result)
        report(result, position, len(jobs))
        if fail_fast and result.status == "failed":
            break
    return results


def run_on_devices(jobs: str, devices: str, shard: str | None, argv: list[str],
                   note: Callable[[str], None] = lambda message: None) -> int:
    """One `avatar batch` process per device, each taking shard i/N of the same jobs and ledger,
    started with the command line ``argv`` less its ``--device(s)``; returns the worst exit code.

    Raises:
        InputError: ``--shard`` given too (the devices make the shards).
    """
    import signal
    import subprocess
    import sys
    import tempfile

    if shard is not None:
        raise InputError("--devices makes its own shards; leave out --shard")
    names = [d.strip() for d in devices.split(",") if d.strip()]
    argv = list(argv)
    drop = {"--devices", "--device"}
    rest, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in drop:
            skip = True
            continue
        if any(arg.startswith(d + "=") for d in drop):
            continue
        rest.append(arg)
    source = jobs
    if jobs == "-":  # children cannot share our stdin: write the jobs once, paths made absolute
        parsed = read_jobs("-")
        handle = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, prefix="avatar-jobs-")
        for job in parsed:  # every column of the row, paths made absolute
            handle.write(json.dumps(job.row) + "\n")
        handle.close()
        source = handle.name
    if "--ledger" not in rest and not any(a.startswith("--ledger=") for a in rest):
        rest += ["--ledger", str(default_ledger(jobs))]  # one ledger, appended by every shard
    rest = [source if a == jobs else a for a in rest]
    children = []
    for i, name in enumerate(names):
        cmd = [sys.executable, "-m", "avatar_cli", *rest, "--shard", f"{i}/{len(names)}", "--device", name]
        children.append(subprocess.Popen(cmd))
        note(f"batch: shard {i}/{len(names)} on {name} (pid {children[-1].pid})")
    try:
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        for child in children:
            child.send_signal(signal.SIGINT)
        for child in children:
            child.wait()
        raise
    return max(codes)
