"""Builds adam_ext._C, the C++/CUDA extension of adam_ext.

CUDA kernels are compiled when a CUDA toolkit is found (``CUDA_HOME``, or
``/usr/local/cuda``) and skipped cleanly otherwise. Environment overrides:

* ``ADAM_EXT_CUDA=0`` never builds CUDA; ``ADAM_EXT_CUDA=1`` requires it (fails if no toolkit).
* ``TORCH_CUDA_ARCH_LIST`` chooses the GPU architectures. The default covers every generation
  from Turing to Blackwell that the installed nvcc can compile for (:data:`GENERATIONS`:
  ``7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX`` with CUDA 12.8 or later), with PTX for the newest so
  that a later card JIT-compiles it. A narrower list builds faster (docs/install.md).

Build with ``pip install --no-build-isolation -e .`` so the installed torch is used.
"""

import glob
import os
import re
import shutil
import subprocess

from setuptools import setup

#: The SASS compiled by default, one per GPU generation: a cubin runs on its own compute capability and
#: the later minors of its major (sm_80 on 8.7 Orin, sm_100 on 10.3 B300, sm_120 on 12.1 GB10).
#: 7.5 Turing (T4, RTX 20xx), 8.0 A100/A30, 8.6 RTX 30xx/A10/A40, 8.9 Ada (L4, L40, RTX 40xx),
#: 9.0 Hopper (H100/H200), 10.0 Blackwell (B200/GB200), 12.0 Blackwell (RTX 50xx, RTX PRO 6000).
GENERATIONS = ("7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0")
#: What each nvcc release compiles, for one too old to answer ``--list-gpu-code`` (its first releases
#: with sm_89/sm_90: 11.8; sm_100 and sm_120: 12.8; CUDA 13 dropped everything before sm_75).
_BY_RELEASE = ((12, 8, GENERATIONS), (11, 8, GENERATIONS[:5]), (11, 1, GENERATIONS[:3]),
               (11, 0, GENERATIONS[:2]))


def _find_cuda_home():
    """Returns the CUDA toolkit folder that holds bin/nvcc, or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    return None


def _nvcc_archs(cuda_home):
    """The compute capabilities (``"8.6"``) the toolkit's nvcc compiles for: its ``--list-gpu-code``,
    else read off its release (``nvcc --version``); None when nvcc does not answer."""
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        listed = subprocess.run([nvcc, "--list-gpu-code"], check=False, capture_output=True, text=True,
                                timeout=60)
        if listed.returncode == 0:
            codes = re.findall(r"sm_(\d+)(?![0-9a-z])", listed.stdout)
            return {f"{int(c) // 10}.{int(c) % 10}" for c in codes}
        version = subprocess.run([nvcc, "--version"], check=False, capture_output=True, text=True,
                                 timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"release (\d+)\.(\d+)", version)
    if not found:
        return None
    release = (int(found.group(1)), int(found.group(2)))
    return next((set(archs) for major, minor, archs in _BY_RELEASE if release >= (major, minor)), set())


def default_cuda_archs(cuda_home) -> str:
    """``TORCH_CUDA_ARCH_LIST`` when the user sets none: the :data:`GENERATIONS` that nvcc compiles,
    ``+PTX`` on the newest (a future GPU JIT-compiles its PTX at first use)."""
    available = _nvcc_archs(cuda_home)
    archs = [a for a in GENERATIONS if available is None or a in available]
    if not archs:
        raise SystemExit(f"the nvcc of {cuda_home} compiles none of the GPU architectures "
                         f"{';'.join(GENERATIONS)}; set TORCH_CUDA_ARCH_LIST, or install CUDA 11.8 or later")
    return ";".join(archs[:-1] + [archs[-1] + "+PTX"])


def _want_cuda(cuda_home):
    flag = os.environ.get("ADAM_EXT_CUDA", "").strip()
    if flag not in ("", "0", "1"):
        raise SystemExit(f"ADAM_EXT_CUDA must be 0, 1 or unset, got {flag!r}")
    if flag == "0":
        return False
    if flag == "1" and cuda_home is None:
        raise SystemExit("ADAM_EXT_CUDA=1 but no CUDA toolkit found (set CUDA_HOME to the folder holding bin/nvcc)")
    return cuda_home is not None


CUDA_HOME = _find_cuda_home()
WITH_CUDA = _want_cuda(CUDA_HOME)
if WITH_CUDA:
    # torch.utils.cpp_extension reads CUDA_HOME when imported; without a GPU
    # driver it otherwise guesses /usr/local and fails to link.
    os.environ["CUDA_HOME"] = CUDA_HOME
    if not os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
        os.environ["TORCH_CUDA_ARCH_LIST"] = default_cuda_archs(CUDA_HOME)

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _missing_cuda_library_includes():
    """Header folders for CUDA libraries the toolkit lacks (e.g. cusparse.h, which ATen's CUDA
    headers include), taken from the nvidia-* wheels that torch itself depends on.

    Added with -isystem, so they are searched only after the toolkit's own headers.
    """
    if os.path.exists(os.path.join(CUDA_HOME, "include", "cusparse.h")):
        return []
    import torch

    site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    found = [d for d in sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))
             if os.path.exists(os.path.join(d, "cusparse.h"))]
    if not found:
        print("adam_ext build: warning: cusparse.h found neither in the CUDA toolkit nor in nvidia wheels")
    return [flag for d in found[:1] for flag in ("-isystem", d)]


def _extension():
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if WITH_CUDA else ""
    defines = [f'-DADAM_EXT_CUDA_ARCHS="{archs}"']
    cxx = ["-O3", "-std=c++20", "-fopenmp", *defines]
    if WITH_CUDA:
        defines.append("-DADAM_EXT_WITH_CUDA")
        cxx.append("-DADAM_EXT_WITH_CUDA")
        system_includes = _missing_cuda_library_includes()
        cxx += system_includes
        nvcc = ["-O3", "-std=c++20", "--use_fast_math", "-lineinfo", *defines, *system_includes]
        return CUDAExtension(
            "adam_ext._C",
            sources + _sources("csrc/cuda/*.cu"),
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension(
        "adam_ext._C",
        sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )


print(
    f"adam_ext build: CUDA={'on' if WITH_CUDA else 'off'}"
    + (f" (CUDA_HOME={CUDA_HOME}, archs={os.environ.get('TORCH_CUDA_ARCH_LIST')})" if WITH_CUDA else
       " (no CUDA toolkit found or ADAM_EXT_CUDA=0)")
)

setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)},
)
