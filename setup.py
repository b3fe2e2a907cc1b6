"""Builds adam_ext._C, the C++/CUDA extension of adam_ext.

CUDA kernels are compiled when a CUDA toolkit is found (``CUDA_HOME``, or
``/usr/local/cuda``) and skipped cleanly otherwise. Environment overrides:

* ``ADAM_EXT_CUDA=0`` never builds CUDA; ``ADAM_EXT_CUDA=1`` requires it (fails if no toolkit).
* ``TORCH_CUDA_ARCH_LIST`` chooses the GPU architectures (default ``8.0;9.0``).

Build with ``pip install --no-build-isolation -e .`` so the installed torch is used.
"""

import glob
import os
import shutil

from setuptools import setup

DEFAULT_CUDA_ARCHS = "8.0;9.0"


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
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

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
