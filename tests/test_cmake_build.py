"""The libtorch (CMake) build of the same sources compiles and its C++ smoke test passes."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cmake_cuda_args() -> list[str]:
    """What libtorch's CMake config needs to find CUDA when torch is a CUDA build and no GPU is present."""
    if torch.version.cuda is None:
        return []
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    args = [f"-DCUDA_TOOLKIT_ROOT_DIR={home}"]
    nvrtc = glob.glob(
        os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "*", "lib", "libnvrtc.so*")
    )
    nvrtc = [p for p in nvrtc if "builtins" not in p and ".alt." not in p]
    if nvrtc:
        args.append(f"-DCUDA_nvrtc_LIBRARY={os.path.realpath(nvrtc[0])}")
    return args


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_build_and_ctest(tmp_path):
    if torch.version.cuda is not None and not os.path.exists(os.environ.get("CUDA_HOME", "/usr/local/cuda")):
        pytest.skip("libtorch of a CUDA build of torch needs a CUDA toolkit to configure")
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0"))
    build = tmp_path / "build"
    configure = [
        "cmake",
        "-S",
        ROOT,
        "-B",
        str(build),
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        *cmake_cuda_args(),
    ]
    for cmd in (
        configure,
        ["cmake", "--build", str(build), "-j2"],
        ["ctest", "--test-dir", str(build), "--output-on-failure"],
    ):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, (
            f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
