"""WordPiece tokenizer (Hugging Face ``tokenizers``): train on reports or load a BERT vocab.

The special tokens are BERT's: ``[PAD] [UNK] [CLS] [SEP] [MASK]``.  A trained vocabulary
puts them at ids 0-4; a loaded ``vocab.txt`` keeps its own ids (bert-base-uncased:
0, 100, 101, 102, 103).  ``encode`` returns report tokens without specials; the model adds
CLS / SEP_V / SEP_L itself.  Saved as ``vocab.txt`` + ``tokenizer.json`` beside a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_NAME = "vocab.txt"
TOKENIZER_NAME = "tokenizer.json"


def _configure(tok: Tokenizer, lowercase: bool) -> Tokenizer:
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


class MedTokenizer:
    """A thin, typed wrapper around a ``tokenizers.Tokenizer`` with a WordPiece model."""

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"the vocabulary lacks the special tokens {missing}")
        self.pad_id = tokenizer.token_to_id("[PAD]")
        self.unk_id = tokenizer.token_to_id("[UNK]")
        self.cls_id = tokenizer.token_to_id("[CLS]")
        self.sep_id = tokenizer.token_to_id("[SEP]")
        self.mask_id = tokenizer.token_to_id("[MASK]")
        self.special_ids = frozenset({self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id})

    # ------------------------------------------------------------------ construction
    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 4000, min_frequency: int = 2, lowercase: bool = True
    ) -> MedTokenizer:
        """Train a WordPiece vocabulary; deterministic for the same texts in the same order."""
        tok = _configure(Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100)), lowercase)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            continuing_subword_prefix="##",
            show_progress=False,
        )
        tok.train_from_iterator(list(texts), trainer=trainer)
        return cls(tok)

    @classmethod
    def from_vocab(cls, vocab_file: str | Path, lowercase: bool = True) -> MedTokenizer:
        """Load a BERT ``vocab.txt`` (one token per line, id = line number)."""
        path = Path(vocab_file)
        if path.is_dir():
            path = path / VOCAB_NAME
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        vocab: dict[str, int] = {}
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            token = line.rstrip("\n")
            if token in vocab:
                continue  # keep the first id, as BERT's loader does
            vocab[token] = i
        if not vocab:
            raise ValueError(f"{path}: the vocabulary is empty")
        tok = _configure(Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100)), lowercase)
        return cls(tok)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MedTokenizer:
        """Load from a checkpoint directory (``tokenizer.json``, else ``vocab.txt``)."""
        directory = Path(directory)
        if (directory / TOKENIZER_NAME).is_file():
            return cls(Tokenizer.from_file(str(directory / TOKENIZER_NAME)))
        return cls.from_vocab(directory / VOCAB_NAME)

    def save(self, directory: str | Path) -> None:
        from .modeling.pretrained import atomic_write_text

        directory = Path(directory)
        vocab = self._tok.get_vocab()
        ordered = sorted(vocab.items(), key=lambda kv: kv[1])
        atomic_write_text(directory / VOCAB_NAME, "".join(t + "\n" for t, _ in ordered))
        atomic_write_text(directory / TOKENIZER_NAME, self._tok.to_str(pretty=False))

    # ------------------------------------------------------------------ use
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def tokens(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._tok.id_to_token(i) for i in ids]
