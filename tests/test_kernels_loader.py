"""lmgen.model.kernels_loader: which level of the kernels is loaded, and where a user sees it."""

import json
import re

import pytest

from lmgen.model import kernels, kernels_loader


def test_the_best_packaged_level_this_cpu_runs_is_loaded():
    kernels.library()
    builds = kernels_loader.packaged_builds()
    assert kernels_loader.kernel_level() == kernels_loader.best_level(builds) == kernels_loader.loaded_level
    assert kernels_loader.kernel_level() == next(level for level in kernels_loader.cpu_levels() if level in builds)


@pytest.mark.parametrize("mode, level", [("0", "none"), ("native", "native")])
def test_the_level_is_known_before_anything_is_loaded(monkeypatch, reloaded_kernels, mode, level):
    """lmgen inspect asks without loading the kernels (or torch)."""
    monkeypatch.setenv("LMGEN_KERNELS", mode)
    assert kernels_loader.kernel_level() == level
    assert kernels.library.cache_info().currsize == 0
    monkeypatch.setenv("LMGEN_KERNELS", "1")
    assert kernels_loader.kernel_level() == kernels_loader.best_level(kernels_loader.packaged_builds())


def test_the_level_is_shown_by_generate_stats_inspect_and_metrics(cli, tiny_dir):
    from lmgen.serve.metrics import Metrics

    kernels.library()
    level = kernels_loader.kernel_level()
    result = cli("generate", "-m", str(tiny_dir), "-n", "2", "--stats", "hello")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"tokens/s.*; native kernels {level}$", result.stderr.decode().strip()), result.stderr
    assert json.loads(cli("inspect", "--json", str(tiny_dir)).stdout)["native_kernels"] == level
    assert f"native kernels: {level}" in cli("inspect", str(tiny_dir)).stdout.decode()
    assert f'lmgen_native_kernels_info{{level="{level}"}} 1.0' in Metrics().exposition()[0].decode()
