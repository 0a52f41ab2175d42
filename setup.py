"""Builds fastallreduce._C: CPU sources always, CUDA sources when torch has CUDA and nvcc exists.

Environment:
  FASTALLREDUCE_CUDA=auto|1|0   force the CUDA sources on or off (default auto)
  TORCH_CUDA_ARCH_LIST          architectures; default "8.0;9.0+PTX" when no GPU is visible
  CUDA_HOME                     toolkit root; guessed from nvcc's real location if unset
"""
import glob
import importlib.util
import os
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _guess_cuda_home():
    # torch guesses CUDA_HOME from the nvcc on PATH; a wrapper script in /usr/local/bin makes it
    # guess /usr/local, which has no libcudart. Prefer the toolkit's own directory.
    if os.environ.get("CUDA_HOME"):
        return
    for cand in ("/usr/local/cuda",):
        if os.path.exists(os.path.join(cand, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = cand
            return


_guess_cuda_home()

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _knobs():
    # The package's knob registry, by path: the package itself cannot be imported before its build.
    spec = importlib.util.spec_from_file_location("_far_knobs", os.path.join(ROOT, "fastallreduce", "knobs.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _want_cuda() -> bool:
    mode = _knobs().value("FASTALLREDUCE_CUDA")
    have = torch.version.cuda is not None and CUDA_HOME is not None and (
        shutil.which("nvcc") is not None or os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")))
    if mode in ("0", "off", "false", "no"):
        return False
    if mode in ("1", "on", "true", "yes"):
        if not have:
            raise RuntimeError("FASTALLREDUCE_CUDA=1 but torch has no CUDA or nvcc was not found")
        return True
    return have


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


cuda = _want_cuda()
cpp_sources = _sources("csrc/**/*.cpp")
cu_sources = _sources("csrc/**/*.cu")
cxx_flags = ["-O3", "-fvisibility=hidden", "-fopenmp"]
define_macros = []
if cuda:
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    define_macros.append(("FASTALLREDUCE_WITH_CUDA", "1"))
    ext = CUDAExtension(
        "fastallreduce._C",
        cpp_sources + cu_sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        extra_link_args=["-fopenmp", "-lrt"],
    )
else:
    ext = CppExtension(
        "fastallreduce._C",
        cpp_sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp", "-lrt"],
    )

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
