"""LLaMA-VID's Q-Former input: the user's question as bert-base-uncased ids (llamavid_arch.py::vlm_attention: the
tokenizer init_bert builds, truncation on the left to 256 ids, [CLS] ... [SEP]). Torch-free and transformers-free, so
that a cpu engine runs it: the `tokenizers` pipeline transformers' BertTokenizer (5.x, tokenization_bert.py) builds
from vocab.txt, rebuilt here: WordPiece, BertNormalizer, BertPreTokenizer, [CLS] $A [SEP], the special tokens and
init_bert's [DEC] as added tokens."""

from pathlib import Path

import numpy as np

from . import IMAGE_TOKEN
from .arch import QFORMER_ADDED_TOKEN, QFORMER_MAX_QUESTION
from .config_checks import read_json
from .errors import CheckpointError

SPECIAL_TOKENS = ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")  # BertTokenizer's, in its argument order


def _vocab(path: Path) -> dict[str, int]:
    """vocab.txt as transformers' load_vocab reads it: one token a line, a repeated token keeping its last line."""
    with open(path, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


class QuestionTokenizer:
    def __init__(self, folder: Path):
        from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors
        from tokenizers.models import WordPiece

        path = Path(folder) / "vocab.txt"
        if not path.is_file():
            raise CheckpointError(f"{folder}: no vocab.txt for the Q-Former's BERT tokenizer; copy bert-base-uncased's")
        config = Path(folder) / "tokenizer_config.json"
        lower = read_json(config, "copy it again").get("do_lower_case", True) if config.is_file() else True
        vocab = _vocab(path)
        missing = [t for t in ("[CLS]", "[SEP]", "[UNK]") if t not in vocab]
        if missing:
            raise CheckpointError(f"{path}: no {missing[0]} token; copy bert-base-uncased's vocab.txt again")
        tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                    lowercase=bool(lower))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        tok.add_special_tokens([AddedToken(t, special=True) for t in (*SPECIAL_TOKENS, QFORMER_ADDED_TOKEN)])
        tok.enable_truncation(max_length=QFORMER_MAX_QUESTION, direction="left")
        self.tokenizer = tok

    def __call__(self, question: str) -> np.ndarray:
        """[L] int64: the question (its <image> tags dropped, as upstream passes the text the user typed)."""
        text = " ".join(question.replace(IMAGE_TOKEN, " ").split())
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)
