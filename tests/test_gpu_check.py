"""The prepared GPU check (benchmarks/gpu.py, issue 24) on a machine without a GPU: its preflight
must say exactly what stops CTranslate2 from using CUDA, and exit with status 2, rather than fail
inside the first model load. The measuring parts need a GPU (or minutes of CPU: ``--device cpu
--quick``) and are run by hand; what is tested here is everything that decides whether they run."""

from __future__ import annotations

import _ctypes
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # benchmarks/ is not a package: its scripts import each other from the path


def run_check(*flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", gpu.REEXEC_MARK)}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_preflight_sees_no_cuda_device_here() -> None:
    pre = gpu.preflight()
    assert pre.cuda_devices == 0
    assert not pre.cuda_usable
    assert pre.missing()[0].startswith("a CUDA device")
    # What the wheel loads was read from its files, and the check opened each of them.
    assert pre.wheel_files and pre.libraries
    assert all(lib.opened == (lib.error == "") for lib in pre.libraries)


def test_cuda_without_a_gpu_exits_2_and_names_what_is_missing() -> None:
    pre = gpu.preflight()
    done = run_check("--device", "cuda")
    out = done.stdout + done.stderr
    assert done.returncode == gpu.EXIT_UNUSABLE
    assert "CTranslate2 cannot use CUDA" in done.stdout
    listed = [line for line in done.stdout.splitlines() if line.startswith("  - ")]
    assert listed[0].startswith("  - a CUDA device")
    missing = [lib for lib in pre.libraries if not lib.opened]
    assert len(listed) == 1 + len(missing)  # the device, then one line per library
    for lib, line in zip(missing, listed[1:]):
        assert line.startswith(f"  - {lib.name}")
        assert (lib.wheel[0] if lib.wheel else "NVIDIA driver") in line
    if pre.missing_wheels():  # how to carry them to a machine without an index
        assert f"pip download --no-deps -d wheels {' '.join(pre.missing_wheels())}" in done.stdout
        assert "--cuda-libs DIR" in done.stdout and "LD_LIBRARY_PATH" in done.stdout
    # the last line on stderr names every missing library again, for a log that keeps only stderr
    assert all(lib.name in done.stderr for lib in missing)
    assert "Traceback" not in out


def test_cuda_libs_folder_reaches_the_dynamic_loader(tmp_path: Path) -> None:
    """A folder given with --cuda-libs is on the loader's path of the re-executed check: a library
    the wheel needs, put there (a real shared object standing in under its name), now opens."""
    pre = gpu.preflight()
    missing = [lib.name for lib in pre.libraries if not lib.opened]
    assert missing, "this machine has every CUDA library: nothing to stand in for"
    (tmp_path / missing[-1]).symlink_to(_ctypes.__file__)
    done = run_check("--device", "cuda", "--cuda-libs", str(tmp_path))
    assert done.returncode == gpu.EXIT_UNUSABLE  # still no device
    row = next(line for line in done.stdout.splitlines() if line.strip().startswith(missing[-1] + " "))
    assert row.split()[1] == "opens"
    assert f"LD_LIBRARY_PATH:   {tmp_path}" in done.stdout


def test_missing_folder_for_cuda_libs_is_refused(tmp_path: Path) -> None:
    done = run_check("--device", "cuda", "--cuda-libs", str(tmp_path / "absent"))
    assert done.returncode == gpu.EXIT_UNUSABLE
    assert "no such folder" in done.stderr


def test_library_names_are_read_with_what_they_load() -> None:
    blob = b"\0libnccl.so.2\0libcublas.so.12\0junk libcuda.so.1\0libcudnn.so.9\0libmkl_def.so.2\0"
    names = gpu.referenced_libraries([blob])
    assert names[0] == "libcuda.so.1"  # the driver first
    assert "libnccl.so.2" not in names and "libmkl_def.so.2" not in names
    assert names.index("libcublasLt.so.12") == names.index("libcublas.so.12") + 1
    assert set(gpu.IMPLIED["libcudnn.so.9"]) <= set(names)


def test_what_is_missing_names_its_wheel_or_the_driver() -> None:
    libs = [
        gpu.LibraryCheck("libcuda.so.1", True),
        gpu.LibraryCheck("libcublas.so.12", True),
        gpu.LibraryCheck("libcublasLt.so.12", True, needed_by="libcublas.so.12"),
        gpu.LibraryCheck("libcudnn_ops.so.9", False, "not found", needed_by="libcudnn.so.9"),
    ]
    pre = gpu.Preflight("m", ["GPU"], "", "4.x", "/x", 1, "", ["float16"], ["x.so"], libs, [], True)
    assert not pre.cuda_usable
    assert pre.missing_wheels() == ["nvidia-cudnn-cu12"]
    (line,) = pre.missing()
    assert line.startswith("libcudnn_ops.so.9, loaded by libcudnn.so.9") and "nvidia-cudnn-cu12" in line
    usable = gpu.Preflight("m", ["GPU"], "", "4.x", "/x", 1, "", ["float16"], ["x.so"], libs[:3], [], True)
    assert usable.cuda_usable and usable.missing() == []
    no_driver = gpu.LibraryCheck("libcuda.so.1", False, "not found")
    assert no_driver.wheel is None


def test_loader_path_is_set_once() -> None:
    env = gpu.library_path_env(["/a", "/b"], {"LD_LIBRARY_PATH": "/b:/c"})
    assert env is not None and env["LD_LIBRARY_PATH"] == "/a:/b:/c" and env[gpu.REEXEC_MARK]
    assert gpu.library_path_env(["/b"], {"LD_LIBRARY_PATH": "/b:/c"}) is None
    assert gpu.library_path_env(["/a"], {gpu.REEXEC_MARK: "1"}) is None  # the re-executed process does not loop


def test_budget_runs_on_the_clock_it_is_given() -> None:
    now = [100.0]
    budget = gpu.Budget(60.0, lambda: now[0])
    assert budget.fits(50.0, reserve_s=10.0)
    now[0] += 20.0
    assert budget.left() == 40.0
    assert not budget.fits(35.0, reserve_s=10.0)
