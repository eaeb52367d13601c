"""Build the native kernels when the package is built, not when it is first run.

The kernels (lmgen/model/kernels.c) are plain C loaded with ctypes, built here once per instruction set
level as files of the package (``lmgen/model/_kernels_<level>*.so``): a wheel carries them, and runs on a
machine with no C compiler. At import lmgen picks the best level the CPU has (``kernels.level``),
as llama.cpp's GGML_CPU_ALL_VARIANTS does. setuptools' Extension builds them: they export no
Python module (ctypes loads them), which the loader never asks for.
"""

import platform

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = ["lmgen/model/kernels.c"]
HEADERS = ["lmgen/model/kernels_dot.h", "lmgen/model/kernels_quant.h", "lmgen/model/kernels_kquant.h",
           "lmgen/model/kernels_amx.h", "lmgen/model/kernels_attention.h",
           "lmgen/model/kernels_project.h"]
COMMON = ["-O3", "-funroll-loops", "-fopenmp"]
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
LEVELS = {"portable": []}  # the compiler's baseline for the target (SSE2 on x86-64, NEON on arm64)
if X86:
    LEVELS["avx2"] = ["-mavx2", "-mfma", "-mf16c"]
    LEVELS["avx512"] = LEVELS["avx2"] + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni"]


class build_kernels(build_ext):
    """Build each level with OpenMP, else (Apple's clang) without it, one thread and still
    vectorised; a level the compiler cannot build at all is left out (lmgen says so at run
    time), never a failed install."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception:  # noqa: BLE001 - CompileError, LinkError
            ext.extra_compile_args = [f if f != "-fopenmp" else "-fopenmp-simd" for f in ext.extra_compile_args]
            ext.extra_link_args = [f for f in ext.extra_link_args if f != "-fopenmp"]
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001
                print(f"lmgen: the {ext.name} kernels could not be built ({exc}); left out")


setup(
    ext_modules=[Extension(f"lmgen.model._kernels_{level}", sources=SOURCES, depends=HEADERS,
                           extra_compile_args=COMMON + flags, extra_link_args=["-fopenmp"])
                 for level, flags in LEVELS.items()],
    cmdclass={"build_ext": build_kernels},
)
