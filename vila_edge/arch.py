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


# VILA's InternViT tensor names (modeling_intern_vit.py) -> transformers' InternVLVisionModel, as transformers'
# conversion_mapping.py renames original InternViT weights ("qianfan_ocr"); applied in order, re.sub on each name.
INTERN_VIT_RENAMES = (
    (r"^embeddings\.class_embedding$", "embeddings.cls_token"),  # [1, 1, C]
    (r"^embeddings\.position_embedding$", "embeddings.position_embeddings"),  # [1, 1 + patches, C], a bare Parameter
    (r"^embeddings\.patch_embedding\.", "embeddings.patch_embeddings.projection."),
    (r"^encoder\.layers\.", "encoder.layer."),
    (r"\.attn\.(q_norm|k_norm)\.", r".attention.\1."),
    (r"\.attn\.proj\.", ".attention.projection_layer."),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
    (r"\.ls1$", ".lambda_1"),
    (r"\.ls2$", ".lambda_2"),
)
# LLaMA-VID's EVA-ViT-g as LAVIS saved it (eva_vit_g.pth, eva_vit.py::VisionTransformer) -> transformers'
# Blip2VisionModel, the same transformer (q_bias / v_bias beside a bias-free qkv, no layer scale, pre-LN blocks).
EVA_RENAMES = (
    (r"^cls_token$", "embeddings.class_embedding"),  # [1, 1, C]
    (r"^pos_embed$", "embeddings.position_embedding"),  # [1, 1 + patches, C]
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.", "encoder.layers."),
    (r"\.norm1\.", ".layer_norm1."),
    (r"\.norm2\.", ".layer_norm2."),
    (r"\.attn\.proj\.", ".self_attn.projection."),
    (r"\.attn\.", ".self_attn."),  # qkv.weight, q_bias, v_bias
)
EVA_HEAD_DIM = 88  # eva_vit.py: num_heads = embed_dim // 88 (16 heads at 1408)
# ImageNet's statistics, which VILA's InternVisionPreprocessor hard-codes (intern_encoder.py::build_transform)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NativeLayer:
    """An encoder layer as the C++ vision engine runs it (kernels/cpu/vit.h: pre-norm, one attention, a GELU MLP, layer
    scales or none), in hf_class's module names: the ONNX export names its nodes after them."""

    norms: tuple[str, str]
    linears: tuple[str, str, str, str, str, str]  # q, k, v, the attention's output, fc1, fc2
    layer_scales: tuple[str, str] | None = None  # modules multiplying the attention's and the MLP's output


SIGLIP_LAYER = NativeLayer(("layer_norm1", "layer_norm2"), ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                           "self_attn.out_proj", "mlp.fc1", "mlp.fc2"))
# The GELU the C++ engine computes for a tower config's hidden_act (transformers' ACT2FN names)
NATIVE_GELU = {"gelu": "erf", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "quick_gelu": "quick"}


@dataclass(frozen=True)
class VisionTower:
    kind: str  # the substring VILA dispatches on in the tower config's `architectures`
    hf_class: str  # transformers class that runs vision_tower/
    cls_token: bool = False  # one class token before the patch tokens (counted in the tower's output)
    smooth_pairs: tuple[tuple[str, tuple[str, ...]], ...] = PRE_LN_SMOOTH_PAIRS  # names in hf_class's layers
    layers: str = "encoder.layers"  # hf_class's encoder layers
    layer_takes_mask: bool = True  # its layers are called layer(hidden, attention_mask=None), else layer(hidden)
    # the position table in the weights on disk, and its axis that counts the positions
    position_embedding: tuple[str, int] = ("embeddings.position_embedding.weight", 0)
    renames: tuple[tuple[str, str], ...] = ()  # weight names on disk -> hf_class's (regex, replacement)
    fused_qkv: tuple[str, tuple[str, str, str]] | None = None  # one q/k/v linear on disk -> hf_class's three
    # preprocessing the tower's VILA class hard-codes, in preprocessor_config.json keys (the size is the tower's
    # image_size); None: the checkpoint's preprocessor_config.json
    preprocessing: dict | None = None
    # the config's image_size is the position table's; the tower runs at the processor's size, the table
    # interpolated (bicubic) to that grid as the tower class does (HF Dinov2Embeddings.interpolate_pos_encoding)
    runs_at_processor_size: bool = False
    native: NativeLayer | None = None  # None: ONNX Runtime runs the tower on a cpu engine


VISION_TOWERS = {
    t.kind: t
    for t in (
        VisionTower("siglip", "SiglipVisionModel", native=SIGLIP_LAYER),
        # CLIP prepends a class token: 577 tokens at 336 px, which `patch` selection drops again.
        VisionTower("clip", "CLIPVisionModel", cls_token=True, native=SIGLIP_LAYER),
        # InternViT-6B (VILA1.5-40b): RMSNorm, qk-norm over the full width, layer scale, a class token, no post-LN.
        # Its preprocessor_config.json names only VILA's InternVisionPreprocessor class, which resizes (PIL bicubic),
        # rescales (ToTensor) and normalises with ImageNet's statistics.
        VisionTower(
            "intern", "InternVLVisionModel", cls_token=True,
            smooth_pairs=(("layernorm_before", ("attention.q_proj", "attention.k_proj", "attention.v_proj")),
                          ("layernorm_after", ("mlp.fc1",))),
            layers="encoder.layer", layer_takes_mask=False, position_embedding=("embeddings.position_embedding", 1),
            renames=INTERN_VIT_RENAMES,
            fused_qkv=("attn.qkv", ("attention.q_proj", "attention.k_proj", "attention.v_proj")),
            preprocessing={"image_processor_type": "InternVisionPreprocessor", "do_resize": True, "resample": 3,
                           "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                           "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)},
        ),
        # EVA-ViT-g (LLaMA-VID): LayerNorm eps 1e-6, exact GELU, a class token; every block's output is used, no
        # final norm (LLaMA-VID's EVAVisionTowerLavis ignores mm_vision_select_layer). One fused qkv linear.
        VisionTower(
            "eva", "Blip2VisionModel", cls_token=True,
            smooth_pairs=(("layer_norm1", ("self_attn.qkv",)), ("layer_norm2", ("mlp.fc1",))),
            position_embedding=("embeddings.position_embedding", 1), layer_takes_mask=False, renames=EVA_RENAMES,
        ),
        # DINOv2 (Prismatic, OpenVLA): HF Dinov2Model, a class token, layer scale, no pre-LN; its table is the
        # 518 px one it was trained at (37² + 1), interpolated to the processor's size (224 px in Prismatic).
        VisionTower(
            "dinov2", "Dinov2Model", cls_token=True,
            # transformers 5's module names (it renames the hub's attention.attention.query/key/value on load)
            smooth_pairs=(("norm1", ("attention.q_proj", "attention.k_proj", "attention.v_proj")), ("norm2", ("mlp.fc1",))),
            layers="encoder.layer", position_embedding=("embeddings.position_embeddings", 1),
            runs_at_processor_size=True,
            native=NativeLayer(("norm1", "norm2"), ("attention.q_proj", "attention.k_proj", "attention.v_proj",
                                                    "attention.o_proj", "mlp.fc1", "mlp.fc2"), ("layer_scale1", "layer_scale2")),
        ),
    )
}


def tower_preprocessing(vision_config: dict) -> dict | None:
    """The preprocessor config a tower class hard-codes, at this tower's image_size; None where the checkpoint's
    preprocessor_config.json holds it."""
    tower = VISION_TOWERS.get(tower_kind(vision_config))
    if tower is None or tower.preprocessing is None:
        return None
    size = vision_config.get("image_size")
    return {**tower.preprocessing, "size": {"height": size, "width": size}}


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
    # the vision side reads the question (LLaMA-VID's Q-Former), and a video's frames fill one image place
    question_conditioned: bool = False


FAMILIES = {
    "vila1.5": Family("vila1.5", image_text="<image>\n", image_end_text="", downsample_order="column"),
    # NVILA puts no newline after <image> in the turn, embeds one after each image block, and its
    # flat_square permutes to row-major.
    "nvila": Family("nvila", image_text="<image>", image_end_text="\n", downsample_order="row"),
    # LLaMA-VID (llamavid_arch.py): each frame is [context token, content tokens], conditioned on the question; the
    # whole video goes in one <image> place (prepare_inputs_labels_for_multimodal).
    "llama-vid": Family("llama-vid", image_text="<image>\n", image_end_text="", downsample_order="column",
                        question_conditioned=True),
}

# ---- LLaMA-VID's Q-Former (llamavid_arch.py::init_bert, qformer.py) ----------------------------------------------

# bert-base-uncased's config.json, which init_bert reads from the hub: what a local copy without one would say.
BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "hidden_act": "gelu", "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "vocab_size": 30522,
             "pad_token_id": 0, "position_embedding_type": "absolute"}
QFORMER_CROSS_ATTENTION_FREQ = 2  # init_bert: a cross-attention block in layers 0, 2, 4, ...
QFORMER_MAX_QUESTION = 256  # vlm_attention: the question's BERT ids, truncated on the left
QFORMER_ADDED_TOKEN = "[DEC]"  # init_bert adds it as bos_token (vocab 30523); BERT's own encoding never emits it
COMPRESS_TYPES = ("mean", "mean_concat", "grid:N", "null")  # token_generation: content tokens per frame


# ---- conversation templates -----------------------------------------------------------------------------
# The conversations of the VILA code each model was trained with (llava/conversation.py, May24 and later:
# Conversation.get_prompt for each SeparatorStyle), as the text of each turn: `{system}`, `{text}` (a user turn, its
# images included) and `{answer}` are filled in; a prompt ends with `generation`, the open assistant turn.

_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
_LLAMA3_HEADER = "<|start_header_id|>{}<|end_header_id|>\n\n"


@dataclass(frozen=True)
class Template:
    name: str
    system_turn: str | None  # with "{system}"; None: render with the tokenizer's own chat template
    system: str  # the default system prompt
    user_turn: str  # with "{text}"
    assistant_turn: str  # with "{answer}": an earlier answer in the conversation
    generation: str  # the assistant turn generation starts in
    stop: tuple[str, ...]  # generation stops at any of these; they are cut from the answer

    def render(self, system: str | None, turns: list[tuple[str, str]]) -> str:
        """The prompt text for (role, text) turns, "user" and "assistant" alternating, ending with a user turn."""
        out = [self.system_turn.replace("{system}", self.system if system is None else system)]
        for role, text in turns:
            out.append((self.user_turn.replace("{text}", text) if role == "user" else
                        self.assistant_turn.replace("{answer}", text)))
        return "".join(out) + self.generation


def _chatml(name: str, system: str, newline: str) -> Template:
    """ChatML as qwen2 (CHATML: a newline after each <|im_end|>) and hermes-2 (MPT: none) write it."""
    end = "<|im_end|>" + newline
    return Template(name, "<|im_start|>system\n{system}" + end, system, "<|im_start|>user\n{text}" + end,
                    "<|im_start|>assistant\n{answer}" + end, "<|im_start|>assistant\n", ("<|im_end|>",))


def _llama3(name: str, sep: str, assistant: str) -> Template:
    return Template(name, "<|begin_of_text|>" + _LLAMA3_HEADER.format("system") + "{system}" + sep, _LLAMA3_SYSTEM,
                    _LLAMA3_HEADER.format("user") + "{text}" + sep, _LLAMA3_HEADER.format(assistant) + "{answer}" + sep,
                    _LLAMA3_HEADER.format(assistant), (sep,))


TEMPLATES = {
    t.name: t
    for t in (
        # SeparatorStyle.TWO: sep " " after user turns, sep2 "</s>" after answers
        Template("vicuna_v1", "{system} ", _VICUNA_SYSTEM, "USER: {text} ", "ASSISTANT: {answer}</s>", "ASSISTANT:",
                 ("</s>",)),
        # Llama-3-VILA1.5-8B-Fix and the README since Aug 2024.
        _llama3("llama_3", "<|eot_id|>", "assistant"),
        # The May 2024 template the original Llama-3-VILA1.5-8B was trained with: sep <|end_of_text|>
        # and an assistant header that reads "system" (the bug "-Fix" retrained away).
        _llama3("llama_3_original", "<|end_of_text|>", "system"),
        _chatml("hermes-2", "Answer the questions.", ""),
        _chatml("qwen2", "You are a helpful assistant", "\n"),
        # llava-hf's chat_template.json: no system prompt (vila-edge --hf-processor; LLaVA-1.5 trained on vicuna_v1).
        Template("llava_hf", "", "", "USER: {text} ", "ASSISTANT: {answer}</s>", "ASSISTANT:", ("</s>",)),
        # LLaMA-VID's conv_vicuna_imgsp_v1: vicuna_v1's text under another name (its training scripts' --version).
        Template("imgsp_v1", "{system} ", _VICUNA_SYSTEM, "USER: {text} ", "ASSISTANT: {answer}</s>", "ASSISTANT:",
                 ("</s>",)),
        Template("auto", None, "", "", "", "", ()),
    )
}

# Checkpoint-name substrings -> conv mode, most specific first (VILA README, TRT-LLM's mapping).
KNOWN_NAMES = (
    ("llama-vid", "imgsp_v1"),
    ("nvila", "qwen2"),
    ("8b-fix", "llama_3"),
    ("vila1.5-8b", "llama_3_original"),
    ("40b", "hermes-2"),
    ("13b", "vicuna_v1"),
    ("3b", "vicuna_v1"),
)
