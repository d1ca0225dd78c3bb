"""Which CUDA architectures the build compiles for.

CMake configure runs only (a few seconds each, nothing is compiled): with
nvcc but no GPU the default build skips the CUDA module instead of compiling
it for five architectures; an explicit list builds just those.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("nvcc") is None,
                                reason="needs cmake and nvcc")


def gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    return smi is not None and "GPU" in subprocess.run([smi, "-L"], capture_output=True,
                                                       text=True).stdout


def configure(build: Path, *defines: str, env=None) -> str:
    pybind11 = subprocess.run([sys.executable, "-m", "pybind11", "--cmakedir"],
                              capture_output=True, text=True, check=True).stdout.strip()
    done = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DSEPFL_INPLACE=OFF",
                           f"-Dpybind11_DIR={pybind11}", f"-DPython_EXECUTABLE={sys.executable}",
                           *defines], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.skipif(gpu_present(), reason="this machine has a GPU")
def test_nvcc_without_a_gpu_skips_the_cuda_module(tmp_path):
    out = configure(tmp_path)
    assert "no GPU found, skipping the CUDA module" in out
    assert "building the CUDA module" not in out


@pytest.mark.slow
def test_an_explicit_architecture_list_builds_only_those(tmp_path):
    out = configure(tmp_path, "-DSEPFL_CUDA=AUTO", env={"CUDAARCHS": "90"})
    assert "building the CUDA module _cuda for 90\n" in out
