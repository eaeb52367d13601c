"""Build the native kernels when the package is built, not when it is first run.

The kernels (lmgen/model/csrc/kernels.c) are plain C loaded with ctypes, built here once per
instruction set level as files of the package (``lmgen/model/_kernels_<level>*.so``): a wheel
carries them, and runs on a machine with no C compiler. At run time lmgen loads the best level the
CPU has (lmgen/model/kernels_loader.py), as llama.cpp's GGML_CPU_ALL_VARIANTS does. The levels,
their flags and the sources are lmgen/model/build_table.py's, which the loader reads too.
setuptools' Extension builds them: they export no Python module (ctypes loads them), which the
loader never asks for.
"""

import importlib.util
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _build_table():
    """lmgen/model/build_table.py, loaded by its path: importing lmgen.model would need lmgen installed."""
    path = Path(__file__).resolve().parent / "lmgen" / "model" / "build_table.py"
    spec = importlib.util.spec_from_file_location("lmgen_build_table", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # NamedTuple and annotations look their module up
    spec.loader.exec_module(module)
    return module


table = _build_table()


class build_kernels(build_ext):
    """Build each level with OpenMP, else (Apple's clang) without it, one thread and still
    vectorised; a level the compiler cannot build at all is left out (lmgen says so at run
    time), never a failed install."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception:  # noqa: BLE001 - CompileError, LinkError
            ext.extra_compile_args = table.serial(ext.extra_compile_args)
            ext.extra_link_args = [f for f in ext.extra_link_args if f != "-fopenmp"]
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001
                print(f"lmgen: the {ext.name} kernels could not be built ({exc}); left out")


setup(
    ext_modules=[Extension(table.extension_name(level.name), sources=[f"lmgen/model/{table.SOURCE}"],
                           depends=[f"lmgen/model/{header}" for header in table.HEADERS],
                           extra_compile_args=[*table.COMMON_FLAGS, *level.flags], extra_link_args=["-fopenmp"])
                 for level in table.LEVELS.values()],
    cmdclass={"build_ext": build_kernels},
)
