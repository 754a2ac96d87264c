"""Every per-architecture fact, as data: LLMs, vision towers, projectors, families and conversation templates.

The loader, the AWQ search, SmoothQuant, the cpu engine export and the TensorRT-LLM checkpoint all read
from here, so adding an architecture is one entry below plus its tests. Entries that differ from the
Llama-like default say why. Lookups by key raise UnsupportedError listing what is supported.
"""

from dataclasses import dataclass, field

from .errors import UnsupportedError

# ---- LLMs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleGroup:
    """AWQ scale group (llm-awq auto_scale.py; AutoAWQ get_layers_for_scaling): `prev` absorbs 1/s, every
    module in `linears` is scaled by s on its input columns, `inspect`'s output scores each candidate s.
    Names are relative to one decoder layer."""

    prev: str
    linears: tuple[str, ...]
    inspect: str


LLAMA_SCALE_GROUPS = (
    ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    # Only without GQA: there v_proj has fewer outputs than o_proj has inputs (each kv head serves
    # several query heads), so a scale per o_proj input cannot be folded into v_proj (llm-awq PR #67).
    ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
    ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
)
# TensorRT-LLM module -> (HF parent, HF linears stacked in this order along the output). Its GatedMLP
# applies the activation to `fc`: fc is gate_proj, gate is up_proj.
LLAMA_TRTLLM_LINEARS = {
    "attention.qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")),
    "attention.dense": ("self_attn", ("o_proj",)),
    "mlp.fc": ("mlp", ("gate_proj",)),
    "mlp.gate": ("mlp", ("up_proj",)),
    "mlp.proj": ("mlp", ("down_proj",)),
}
LLAMA_TRTLLM_NORMS = {"input_layernorm": "input_layernorm", "post_layernorm": "post_attention_layernorm"}
# rope_type values whose inverse frequencies the engines compute as transformers does
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class LlmArch:
    model_type: str  # llm/config.json model_type
    trtllm_class: str  # TensorRT-LLM's model class, the checkpoint config's `architecture`
    qkv_bias: bool = False  # q/k/v projections carry a bias (exported beside the int4 weights)
    scale_groups: tuple[ScaleGroup, ...] = LLAMA_SCALE_GROUPS
    trtllm_linears: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=lambda: LLAMA_TRTLLM_LINEARS)
    trtllm_norms: dict[str, str] = field(default_factory=lambda: LLAMA_TRTLLM_NORMS)
    rope_types: tuple[str, ...] = ROPE_TYPES
    trtllm_config: dict = field(default_factory=dict)  # extra keys of the TensorRT-LLM checkpoint config


LLM_ARCHS = {
    a.model_type: a
    for a in (
        LlmArch("llama", "LlamaForCausalLM"),
        # Qwen2 (NVILA's LLM) is Llama with biases on q/k/v; they ride along with the scaled weights.
        LlmArch("qwen2", "Qwen2ForCausalLM", qkv_bias=True, trtllm_config={"qwen_type": "qwen2"}),
    )
}


def llm_for_trtllm_class(name: str) -> LlmArch:
    """The architecture a TensorRT-LLM checkpoint config's `architecture` names."""
    return get_llm(next((a.model_type for a in LLM_ARCHS.values() if a.trtllm_class == name), name))


def get_llm(model_type: str | None, where: str = "", missing: str = "") -> LlmArch:
    """The entry for an llm/config.json model_type; `missing` says what is absent for an unknown one."""
    if model_type not in LLM_ARCHS:
        at = f"{where}: " if where else ""
        what = f"{missing} LLM model_type {model_type!r}" if missing else f"LLM model_type {model_type!r} is not supported"
        raise UnsupportedError(f"{at}{what}; supported: {', '.join(LLM_ARCHS)}")
    return LLM_ARCHS[model_type]


# ---- vision towers ----------------------------------------------------------------------------------

# (LayerNorm, the linears it feeds) inside one SigLIP/CLIP encoder layer: what SmoothQuant folds.
PRE_LN_SMOOTH_PAIRS = (
    ("layer_norm1", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("layer_norm2", ("mlp.fc1",)),
)


@dataclass(frozen=True)
class VisionTower:
    kind: str  # the substring VILA dispatches on in the tower config's `architectures`
    hf_class: str  # transformers class that loads vision_tower/
    cls_token: bool = False  # one class token before the patch tokens (counted in the tower's output)
    smooth_pairs: tuple[tuple[str, tuple[str, ...]], ...] = PRE_LN_SMOOTH_PAIRS


VISION_TOWERS = {
    t.kind: t
    for t in (
        VisionTower("siglip", "SiglipVisionModel"),
        # CLIP prepends a class token: 577 tokens at 336 px, which `patch` selection drops again.
        VisionTower("clip", "CLIPVisionModel", cls_token=True),
    )
}


def tower_kind(vision_config: dict) -> str:
    """The tower kind a vision config names (VILA's substring match on `architectures`), or what it names."""
    archs = " ".join(vision_config.get("architectures") or [vision_config.get("model_type") or ""])
    return next((k for k in VISION_TOWERS if k in archs.lower()), archs or "unknown")


def get_tower(kind: str, where: str = "") -> VisionTower:
    if kind not in VISION_TOWERS:
        at = f"{where}: " if where else ""
        raise UnsupportedError(f"{at}vision tower {kind!r} is not supported yet; supported: {', '.join(VISION_TOWERS)}")
    return VISION_TOWERS[kind]


# ---- projectors ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectorSpec:
    downsample: int  # k: k×k neighbouring tokens are concatenated (1: none)
    order: str  # "row" or "column": order of the downsampled tokens; "" when there is no downsample
    first_key: str  # weight of the first Linear: [out, m·k²]
    last_key: str  # weight of the last Linear: [H, in]


PROJECTORS = {
    # VILA1.5 was released with column-major output (pair-column index outer, no trailing
    # permute in flat_square); NVILA-era code adds the permute and is row-major.
    "mlp_downsample": ProjectorSpec(2, "column", "layers.2.weight", "layers.4.weight"),
    "mlp_downsample_2x2_fix": ProjectorSpec(2, "row", "layers.2.weight", "layers.4.weight"),
    "mlp_downsample_3x3_fix": ProjectorSpec(3, "row", "layers.2.weight", "layers.7.weight"),
    "linear": ProjectorSpec(1, "", "layers.weight", "layers.weight"),
    "mlp2x_gelu": ProjectorSpec(1, "", "layers.0.weight", "layers.2.weight"),
}
ORDERS = ("row", "column")


def tokens_after(n_tokens: int, k: int) -> int:
    """Tokens out of a k×k downsample of a square grid of n_tokens (zero-padded up to a multiple of k)."""
    g = round(n_tokens**0.5)
    if k == 1:
        return n_tokens
    if g * g != n_tokens:
        raise ValueError(f"{n_tokens} vision tokens do not form a square grid")
    return (-(-g // k)) ** 2


# ---- families --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """What differs between VILA1.5 (and LLaVA-lineage) checkpoints and NVILA."""

    name: str
    image_text: str  # text each image or frame puts in the user turn
    image_end_text: str  # text embedded after each image block (NVILA's end token)
    downsample_order: str  # token order of a plain mlp_downsample projector


FAMILIES = {
    "vila1.5": Family("vila1.5", image_text="<image>\n", image_end_text="", downsample_order="column"),
    # NVILA puts no newline after <image> in the turn, embeds one after each image block, and its
    # flat_square permutes to row-major.
    "nvila": Family("nvila", image_text="<image>", image_end_text="\n", downsample_order="row"),
}


# ---- conversation templates -----------------------------------------------------------------------------
# The single-turn generation prompts of the VILA code each model was trained with (llava/conversation.py,
# May24 and later); `{question}` is the user turn, images included.

_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_LLAMA3_SYSTEM = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision "
    "assistant. You are able to understand the visual content that the user provides, and assist the user "
    "with a variety of tasks using natural language."
)


@dataclass(frozen=True)
class Template:
    name: str
    prompt: str | None  # with "{question}"; None: render with the tokenizer's own chat template
    stop: tuple[str, ...]  # generation stops at any of these; they are cut from the answer


TEMPLATES = {
    t.name: t
    for t in (
        Template("vicuna_v1", _VICUNA_SYSTEM + " USER: {question} ASSISTANT:", ("</s>",)),
        # Llama-3-VILA1.5-8B-Fix and the README since Aug 2024.
        Template(
            "llama_3",
            _LLAMA3_SYSTEM + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{question}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            ("<|eot_id|>",),
        ),
        # The May 2024 template the original Llama-3-VILA1.5-8B was trained with: sep <|end_of_text|>
        # and an assistant header that reads "system" (the bug "-Fix" retrained away).
        Template(
            "llama_3_original",
            _LLAMA3_SYSTEM + "<|end_of_text|><|start_header_id|>user<|end_header_id|>\n\n{question}<|end_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\n",
            ("<|end_of_text|>",),
        ),
        Template(
            "hermes-2",
            "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n{question}<|im_end|>"
            "<|im_start|>assistant\n",
            ("<|im_end|>",),
        ),
        Template(
            "qwen2",
            "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n",
            ("<|im_end|>",),
        ),
        # llava-hf's chat_template.json: no system prompt (vila-edge --hf-processor; LLaVA-1.5 trained on vicuna_v1).
        Template("llava_hf", "USER: {question} ASSISTANT:", ("</s>",)),
        Template("auto", None, ()),
    )
}

# Checkpoint-name substrings -> conv mode, most specific first (VILA README, TRT-LLM's mapping).
KNOWN_NAMES = (
    ("nvila", "qwen2"),
    ("8b-fix", "llama_3"),
    ("vila1.5-8b", "llama_3_original"),
    ("40b", "hermes-2"),
    ("13b", "vicuna_v1"),
    ("3b", "vicuna_v1"),
)
