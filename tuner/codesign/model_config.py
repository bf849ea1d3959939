"""Hugging Face ``config.json`` as cotune reads it: one typed :class:`~cotune.tuner.codesign.decoder.ModelConfig`,
whatever family wrote it.

Every family spells its sizes its own way (``num_local_experts``, ``num_experts``, ``n_routed_experts``;
``intermediate_size`` for the experts of Mixtral but for the dense layers of Qwen2-MoE); the readers in
:mod:`cotune.tuner.codesign.families` turn each spelling into the same description. The meaning of each key
follows the transformers 5 config and modeling code of the family (the authority for what a released
config.json means); where the server decides differently (vLLM's ``moe_layer_freq``), the server's rule is
used, because the plan tunes what the server runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from cotune.tuner.codesign.decoder import ModelConfig
from cotune.tuner.codesign.families import read_config
from cotune.tuner.errors import SpecError


def parse_model_config(data: object, source: str) -> ModelConfig:
    """Read a decoded config.json; every error is one SpecError line naming ``source`` and the key."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a model config is a JSON object (hidden_size, num_attention_heads, ...)")
    return read_config(data, source)


def load_model_config(path: Path) -> ModelConfig:
    """Read a Hugging Face config.json (a full one or a subset such as those in models/)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise SpecError(f"{path}: not valid JSON: nested too deeply") from None
    return parse_model_config(data, str(path))
