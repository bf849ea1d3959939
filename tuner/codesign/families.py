"""One reader per config.json layout, each turning its family's keys into a :class:`ModelConfig`.

The family comes from ``model_type`` (as transformers' AutoConfig decides); a multimodal wrapper whose decoder
sits under ``text_config`` (Llama-4) is read from there. Sizes are required keys: a config that lacks one gets
one line naming every missing key. Layout keys that real config.json files always carry but transformers
defaults (``decoder_sparse_step``, ``first_k_dense_replace``, ...) take transformers' default for the family.
An unknown ``model_type`` is read as a dense Llama-style decoder unless it has experts, which is refused: no
plan is better than one that drops a model's experts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from cotune.tuner.codesign.decoder import Dim, Experts, Family, GqaAttention, MlaAttention, ModelConfig
from cotune.tuner.codesign.not_modelled import not_modelled
from cotune.tuner.errors import SpecError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

MAX_SIZE = 1 << 24  # larger than any hidden size, vocabulary or expert count on the hub
MAX_LAYERS = 10_000
_Size = Annotated[int, Field(strict=True, gt=0, le=MAX_SIZE)]
_Count = Annotated[int, Field(strict=True, ge=0, le=MAX_SIZE)]
_Layers = Annotated[int, Field(strict=True, gt=0, le=MAX_LAYERS)]
_LayerList = Annotated[list[Annotated[int, Field(strict=True, ge=0)]], Field(max_length=MAX_LAYERS)]


def _prefix(info: ValidationInfo) -> str:
    return (info.context or {}).get("prefix", "")


def _check_layers(layers: list[int], key: str, total: int) -> None:
    bad = [i for i in layers if i >= total]
    if bad:
        raise ValueError(f"{key} holds layer {bad[0]}, but num_hidden_layers is {total}")


class _Decoder(BaseModel):
    """Keys every decoder has; subclasses add attention and MLP keys and say which layers hold experts."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    NAME: ClassVar[str] = "Llama-style"
    FAMILY: ClassVar[Family] = Family.LLAMA
    EXPERT_KEYS: ClassVar[tuple[str, ...]] = ()  # spellings of the expert count, the family's own first

    hidden_size: _Size
    num_attention_heads: _Size
    num_hidden_layers: _Layers
    vocab_size: _Size
    max_position_embeddings: _Size | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_expert_count(cls, data: Any, info: ValidationInfo) -> Any:
        """transformers maps the other spellings onto the family's own (its attribute_map): accept any one."""
        if not isinstance(data, dict) or len(cls.EXPERT_KEYS) < 2:
            return data
        given = {k: data[k] for k in cls.EXPERT_KEYS if data.get(k) is not None}
        if len({repr(v) for v in given.values()}) > 1:
            p = _prefix(info)
            raise ValueError(" and ".join(f"{p}{k} {v}" for k, v in given.items()) + " disagree")
        if given and cls.EXPERT_KEYS[0] not in given:
            data = {**data, cls.EXPERT_KEYS[0]: next(iter(given.values()))}
        return data

    def attention(self, p: str) -> GqaAttention | MlaAttention:
        raise NotImplementedError

    def mlp(self, p: str) -> Dim | None:
        """Width of the dense MLP of the layers without experts."""
        return None

    def experts(self, p: str) -> Experts | None:
        return None

    def shared(self, p: str) -> Dim | None:
        return None

    def moe_layers(self) -> tuple[int, ...]:
        return ()

    def build(self, p: str, model_type: str | None, notes: list[str]) -> ModelConfig:
        model = ModelConfig(
            family=self.FAMILY,
            model_type=model_type,
            hidden_size=self.hidden_size,
            vocab_size=self.vocab_size,
            num_hidden_layers=self.num_hidden_layers,
            attention=self.attention(p),
            mlp_intermediate=self.mlp(p),
            experts=self.experts(p),
            shared_intermediate=self.shared(p),
            moe_layers=self.moe_layers(),
            max_position_embeddings=self.max_position_embeddings,
            not_modelled=tuple(notes),
        )
        if model.dense_layers and model.mlp_intermediate is None:
            raise SpecError(f"{model.dense_layers} layers have a dense MLP but the config gives no width for it")
        return model


class _Gqa(_Decoder):
    num_key_value_heads: _Size | None = None
    head_dim: _Size | None = None

    @model_validator(mode="after")
    def _heads(self, info: ValidationInfo) -> _Gqa:
        p = _prefix(info)
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{p}num_attention_heads {self.num_attention_heads} does not divide {p}hidden_size "
                f"{self.hidden_size} (give {p}head_dim if the model's heads are not hidden_size / heads wide)"
            )
        kv = self.num_key_value_heads or self.num_attention_heads
        if self.num_attention_heads % kv:
            raise ValueError(
                f"{p}num_key_value_heads {kv} does not divide {p}num_attention_heads {self.num_attention_heads}"
            )
        return self

    def attention(self, p: str) -> GqaAttention:
        kv_key = "num_key_value_heads" if self.num_key_value_heads is not None else "num_attention_heads"
        return GqaAttention(
            heads=Dim(self.num_attention_heads, p + "num_attention_heads"),
            kv_heads=Dim(self.num_key_value_heads or self.num_attention_heads, p + kv_key),
            head_dim=self.head_dim or self.hidden_size // self.num_attention_heads,
        )


class _Moe(_Decoder):
    """Routed experts in every layer unless a subclass says otherwise; ``expert_width`` names the key."""

    EXPERT_WIDTH: ClassVar[str] = "intermediate_size"
    num_experts_per_tok: _Size

    def expert_count(self) -> int:
        return getattr(self, self.EXPERT_KEYS[0])

    @model_validator(mode="after")
    def _topk(self, info: ValidationInfo) -> _Moe:
        p, count = _prefix(info), self.expert_count()
        if self.num_experts_per_tok > count:
            raise ValueError(f"{p}num_experts_per_tok {self.num_experts_per_tok} > {p}{self.EXPERT_KEYS[0]} {count}")
        return self

    def experts(self, p: str) -> Experts:
        return Experts(
            count=Dim(self.expert_count(), p + self.EXPERT_KEYS[0]),
            topk=self.num_experts_per_tok,
            intermediate=Dim(getattr(self, self.EXPERT_WIDTH), p + self.EXPERT_WIDTH),
        )

    def moe_layers(self) -> tuple[int, ...]:
        return tuple(range(self.num_hidden_layers))


class Llama(_Gqa):
    intermediate_size: _Size

    def mlp(self, p: str) -> Dim:
        return Dim(self.intermediate_size, p + "intermediate_size")


class Mixtral(_Gqa, _Moe):
    NAME, FAMILY, EXPERT_KEYS = "Mixtral", Family.MIXTRAL, ("num_local_experts", "num_experts")
    num_local_experts: _Size
    intermediate_size: _Size  # each expert's width; Mixtral has no dense layer


class _QwenMoe(_Gqa, _Moe):
    """Qwen2-MoE and Qwen3-MoE: a layer is dense if listed in ``mlp_only_layers`` or off the
    ``decoder_sparse_step`` grid (transformers and vLLM: ``(i + 1) % decoder_sparse_step == 0``)."""

    EXPERT_WIDTH = "moe_intermediate_size"
    num_experts: _Size
    intermediate_size: _Size  # the dense layers' width
    moe_intermediate_size: _Size
    decoder_sparse_step: _Size = 1
    mlp_only_layers: _LayerList = []

    @model_validator(mode="after")
    def _layer_list(self, info: ValidationInfo) -> _QwenMoe:
        _check_layers(self.mlp_only_layers, _prefix(info) + "mlp_only_layers", self.num_hidden_layers)
        return self

    def mlp(self, p: str) -> Dim:
        return Dim(self.intermediate_size, p + "intermediate_size")

    def moe_layers(self) -> tuple[int, ...]:
        dense = set(self.mlp_only_layers)
        step = self.decoder_sparse_step
        return tuple(i for i in range(self.num_hidden_layers) if i not in dense and (i + 1) % step == 0)


class Qwen2Moe(_QwenMoe):
    NAME, FAMILY, EXPERT_KEYS = "Qwen2-MoE", Family.QWEN2_MOE, ("num_experts",)
    shared_expert_intermediate_size: _Count  # 0: no shared expert (vLLM skips it)

    def shared(self, p: str) -> Dim | None:
        width = self.shared_expert_intermediate_size
        return Dim(width, p + "shared_expert_intermediate_size") if width else None


class Qwen3Moe(_QwenMoe):
    NAME, FAMILY, EXPERT_KEYS = "Qwen3-MoE", Family.QWEN3_MOE, ("num_experts", "num_local_experts")


class _DeepSeek(_Moe):
    """MLA attention; dense MLP in the first ``first_k_dense_replace`` layers, then routed experts in every
    ``moe_layer_freq``-th layer (vLLM's rule; transformers ignores moe_layer_freq, 1 in every released model)
    plus ``n_shared_experts`` shared experts of ``moe_intermediate_size`` each."""

    EXPERT_WIDTH = "moe_intermediate_size"
    n_routed_experts: _Size
    intermediate_size: _Size
    moe_intermediate_size: _Size
    n_shared_experts: _Count | None
    first_k_dense_replace: _Count = 0
    moe_layer_freq: _Size = 1
    q_lora_rank: _Size | None
    kv_lora_rank: _Size
    qk_nope_head_dim: _Size
    qk_rope_head_dim: _Size
    v_head_dim: _Size

    def attention(self, p: str) -> MlaAttention:
        return MlaAttention(
            heads=Dim(self.num_attention_heads, p + "num_attention_heads"),
            q_lora_rank=self.q_lora_rank,
            kv_lora_rank=self.kv_lora_rank,
            qk_nope_head_dim=self.qk_nope_head_dim,
            qk_rope_head_dim=self.qk_rope_head_dim,
            v_head_dim=self.v_head_dim,
        )

    def mlp(self, p: str) -> Dim:
        return Dim(self.intermediate_size, p + "intermediate_size")

    def shared(self, p: str) -> Dim | None:
        if not self.n_shared_experts:
            return None
        width = self.n_shared_experts * self.moe_intermediate_size
        return Dim(width, f"{p}n_shared_experts x {p}moe_intermediate_size")

    def moe_layers(self) -> tuple[int, ...]:
        first, freq = self.first_k_dense_replace, self.moe_layer_freq
        return tuple(i for i in range(self.num_hidden_layers) if i >= first and i % freq == 0)


class DeepSeekV2(_DeepSeek):
    NAME, FAMILY, EXPERT_KEYS = "DeepSeek-V2", Family.DEEPSEEK_V2, ("n_routed_experts", "num_experts")


class DeepSeekV3(_DeepSeek):
    NAME, FAMILY, EXPERT_KEYS = "DeepSeek-V3", Family.DEEPSEEK_V3, ("n_routed_experts", "num_local_experts")
    first_k_dense_replace: _Count = 3


class Llama4(_Gqa, _Moe):
    """Routed experts and one shared expert, both ``intermediate_size`` wide, in every
    ``interleave_moe_layer_step``-th layer (vLLM: ``(i + 1) % step == 0``; transformers' ``moe_layers`` list,
    derived from the step by default, must agree); ``intermediate_size_mlp`` wide dense MLP elsewhere."""

    NAME, FAMILY, EXPERT_KEYS = "Llama-4", Family.LLAMA4, ("num_local_experts",)
    num_local_experts: _Size
    intermediate_size: _Size
    intermediate_size_mlp: _Size | None = None
    interleave_moe_layer_step: _Count = 1
    moe_layers_: _LayerList | None = Field(default=None, alias="moe_layers")
    head_dim: _Size | None = 128  # transformers' default when the key is absent

    @model_validator(mode="after")
    def _layout(self, info: ValidationInfo) -> Llama4:
        p = _prefix(info)
        if self.moe_layers_ is not None:
            _check_layers(self.moe_layers_, p + "moe_layers", self.num_hidden_layers)
            if sorted(set(self.moe_layers_)) != list(self.moe_layers()):
                raise ValueError(
                    f"{p}moe_layers disagrees with {p}interleave_moe_layer_step {self.interleave_moe_layer_step} "
                    "(vLLM places the MoE layers by the step)"
                )
        if len(self.moe_layers()) < self.num_hidden_layers and self.intermediate_size_mlp is None:
            raise ValueError(f"{p}intermediate_size_mlp is missing: the dense layers' width")
        return self

    def mlp(self, p: str) -> Dim | None:
        width = self.intermediate_size_mlp
        return Dim(width, p + "intermediate_size_mlp") if width else None

    def shared(self, p: str) -> Dim:
        return Dim(self.intermediate_size, p + "intermediate_size")

    def moe_layers(self) -> tuple[int, ...]:
        step = self.interleave_moe_layer_step
        return tuple(i for i in range(self.num_hidden_layers) if step and (i + 1) % step == 0)


class Olmoe(_Gqa, _Moe):
    NAME, FAMILY, EXPERT_KEYS = "OLMoE", Family.OLMOE, ("num_experts", "num_local_experts")
    num_experts: _Size
    intermediate_size: _Size


class GraniteMoe(_Gqa, _Moe):
    """GraniteMoe and GraniteMoeShared: the shared MLP (``shared_mlp``) exists when its width is not 0."""

    NAME, FAMILY, EXPERT_KEYS = "GraniteMoe", Family.GRANITE_MOE, ("num_local_experts",)
    num_local_experts: _Size
    intermediate_size: _Size
    shared_intermediate_size: _Count = 0

    def shared(self, p: str) -> Dim | None:
        width = self.shared_intermediate_size
        return Dim(width, p + "shared_intermediate_size") if width else None


class GptOss(_Gqa, _Moe):
    NAME, FAMILY, EXPERT_KEYS = "gpt-oss", Family.GPT_OSS, ("num_local_experts", "num_experts")
    num_local_experts: _Size
    intermediate_size: _Size
    head_dim: _Size | None = 64  # transformers' default when the key is absent


READERS: dict[str, type[_Decoder]] = {
    "llama": Llama,
    "mixtral": Mixtral,
    "qwen2_moe": Qwen2Moe,
    "qwen3_moe": Qwen3Moe,
    "deepseek_v2": DeepSeekV2,
    "deepseek_v3": DeepSeekV3,
    "llama4": Llama4,
    "llama4_text": Llama4,
    "olmoe": Olmoe,
    "granitemoe": GraniteMoe,
    "granitemoeshared": GraniteMoe,
    "gpt_oss": GptOss,
}
_ANY_EXPERT_KEY = ("num_local_experts", "num_experts", "n_routed_experts")


def _decoder_part(data: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The decoder's keys and their prefix: ``text_config`` of a multimodal wrapper (Llama-4), else the top."""
    text = data.get("text_config")
    if isinstance(text, dict) and "hidden_size" not in data:
        return text, "text_config."
    return data, ""


def _describe(exc: ValidationError, source: str, p: str, reader: type[_Decoder]) -> str:
    """All of a config's problems on one line: every missing key together, then each bad value."""
    missing, bad = [], []
    for err in exc.errors():
        key = p + ".".join(str(part) for part in err["loc"])
        if err["type"] == "missing":
            own = reader.EXPERT_KEYS[:1]
            other = [p + k for k in reader.EXPERT_KEYS[1:]] if own and key == p + own[0] else []
            missing.append(key + (f" (or {', '.join(other)})" if other else ""))
        elif err["loc"]:
            bad.append(f"{key}: {err['msg'].removeprefix('Value error, ')}")
        else:
            bad.append(err["msg"].removeprefix("Value error, "))
    parts = [f"not a config plan can read as {reader.NAME}: missing {', '.join(missing)}"] if missing else []
    return f"{source}: " + "; ".join(parts + bad)


def read_config(data: Mapping[str, Any], source: str) -> ModelConfig:
    """The :class:`ModelConfig` of a decoded config.json; every error is one SpecError line naming ``source``."""
    text, p = _decoder_part(data)
    model_type = text.get("model_type", data.get("model_type"))
    if model_type is not None and not isinstance(model_type, str):
        raise SpecError(f"{source}: {p}model_type must be a string, got {model_type!r}")
    reader = READERS.get(model_type) if model_type else None
    if reader is None:
        experts = [k for k in _ANY_EXPERT_KEY if isinstance(text.get(k), int) and text[k] > 0]
        if experts:
            raise SpecError(
                f"{source}: {p}{experts[0]} {text[experts[0]]}: model_type {model_type!r} is not an MoE family "
                f"plan reads (known: {', '.join(sorted(READERS))}); planning it as dense would drop its experts"
            )
        reader = Llama
    try:
        config = reader.model_validate(text, context={"prefix": p})
    except ValidationError as exc:
        raise SpecError(_describe(exc, source, p, reader)) from None
    try:
        return config.build(p, model_type, not_modelled(reader.FAMILY, model_type, data, text))
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None
