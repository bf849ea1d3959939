"""Hugging Face ``config.json`` as cotune reads it: the handful of numbers that fix a decoder's kernel shapes,
validated so that every error names the file and the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from cotune.tuner.errors import SpecError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_PositiveInt = Annotated[int, Field(strict=True, gt=0)]


class ModelConfig(BaseModel):
    """The numbers of a Hugging Face ``config.json`` that fix a decoder's kernel shapes; other keys are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())

    hidden_size: _PositiveInt
    intermediate_size: _PositiveInt
    num_attention_heads: _PositiveInt
    num_hidden_layers: _PositiveInt
    vocab_size: _PositiveInt
    num_key_value_heads: _PositiveInt | None = None
    head_dim: _PositiveInt | None = None
    num_local_experts: _PositiveInt | None = None
    num_experts_per_tok: _PositiveInt | None = None
    moe_intermediate_size: _PositiveInt | None = None
    max_position_embeddings: _PositiveInt | None = None
    model_type: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} does not divide hidden_size {self.hidden_size} "
                "(give head_dim if the model's heads are not hidden_size / heads wide)"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_key_value_heads {self.kv_heads} does not divide num_attention_heads {self.num_attention_heads}"
            )
        if (self.num_local_experts is None) != (self.num_experts_per_tok is None):
            raise ValueError("an MoE model needs both num_local_experts and num_experts_per_tok")
        if self.num_local_experts is not None and self.num_experts_per_tok > self.num_local_experts:
            raise ValueError(
                f"num_experts_per_tok {self.num_experts_per_tok} > num_local_experts {self.num_local_experts}"
            )
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        """``head_dim`` if the config gives it (Gemma, Mistral-Nemo), else hidden / heads as in Llama."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return self.num_local_experts is not None

    @property
    def expert_intermediate(self) -> int:
        """Per-expert MLP width: ``moe_intermediate_size`` (DeepSeek, Qwen-MoE) or, as Mixtral, intermediate_size."""
        return self.moe_intermediate_size or self.intermediate_size


# Keys other MoE families use for their expert count: planning such a model as dense would be silently wrong.
_OTHER_MOE_KEYS = ("num_experts", "n_routed_experts")


def parse_model_config(data: object, source: str) -> ModelConfig:
    """Validate a decoded config.json; every error is one SpecError naming ``source`` and the key."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a model config is a JSON object (hidden_size, num_attention_heads, ...)")
    if "num_local_experts" not in data:
        for key in _OTHER_MOE_KEYS:
            if isinstance(data.get(key), int) and not isinstance(data[key], bool) and data[key] > 0:
                raise SpecError(
                    f"{source}: {key}: this MoE layout is not supported; plan reads Mixtral-style "
                    "num_local_experts and num_experts_per_tok"
                )
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(config)"
            msg = "missing required key" if err["type"] == "missing" else err["msg"].removeprefix("Value error, ")
            parts.append(f"{source}: {key}: {msg}")
        raise SpecError("; ".join(parts)) from None


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
    return parse_model_config(data, str(path))
