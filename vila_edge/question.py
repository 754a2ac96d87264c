"""LLaMA-VID's Q-Former input: the user's question as bert-base-uncased ids (llamavid_arch.py::vlm_attention: the
tokenizer init_bert builds, truncation on the left to 256 ids, [CLS] ... [SEP]). Torch-free (transformers' tokenizer)."""

from pathlib import Path

import numpy as np

from . import IMAGE_TOKEN
from .arch import QFORMER_ADDED_TOKEN, QFORMER_MAX_QUESTION
from .config_checks import read_json
from .errors import CheckpointError


class QuestionTokenizer:
    def __init__(self, folder: Path):
        from transformers import BertTokenizer

        vocab = Path(folder) / "vocab.txt"
        if not vocab.is_file():
            raise CheckpointError(f"{folder}: no vocab.txt for the Q-Former's BERT tokenizer; copy bert-base-uncased's")
        config = Path(folder) / "tokenizer_config.json"
        lower = read_json(config, "copy it again").get("do_lower_case", True) if config.is_file() else True
        self.tokenizer = BertTokenizer(str(vocab), do_lower_case=lower, truncation_side="left")
        self.tokenizer.add_special_tokens({"bos_token": QFORMER_ADDED_TOKEN})

    def __call__(self, question: str) -> np.ndarray:
        """[L] int64: the question (its <image> tags dropped, as upstream passes the text the user typed)."""
        text = " ".join(question.replace(IMAGE_TOKEN, " ").split())
        ids = self.tokenizer(text, truncation=True, max_length=QFORMER_MAX_QUESTION).input_ids
        return np.asarray(ids, dtype=np.int64)
