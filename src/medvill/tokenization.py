"""WordPiece tokenizer (Hugging Face ``tokenizers``): train on reports or load a BERT vocab.

The special tokens are BERT's: ``[PAD] [UNK] [CLS] [SEP] [MASK]``.  A trained vocabulary
puts them at ids 0-4; a loaded ``vocab.txt`` keeps its own ids (bert-base-uncased:
0, 100, 101, 102, 103).  ``encode`` returns report tokens without specials; the model adds
CLS / SEP_V / SEP_L itself.  Saved as ``vocab.txt`` + ``tokenizer.json`` beside a checkpoint.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from .fileio import not_utf8

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_NAME = "vocab.txt"
TOKENIZER_NAME = "tokenizer.json"


def _configure(tok: Tokenizer, lowercase: bool) -> Tokenizer:
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


class TokenizerFileError(ValueError):
    """A checkpoint's tokenizer file is damaged (named in the message)."""


class MedTokenizer:
    """A thin, typed wrapper around a ``tokenizers.Tokenizer`` with a WordPiece model."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        special = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        ids = {t: i for t, i in special.items() if i is not None}
        missing = [t for t in SPECIAL_TOKENS if t not in ids]
        if missing:
            raise ValueError(f"the vocabulary lacks the special tokens {missing}")
        self.pad_id = ids["[PAD]"]
        self.unk_id = ids["[UNK]"]
        self.cls_id = ids["[CLS]"]
        self.sep_id = ids["[SEP]"]
        self.mask_id = ids["[MASK]"]
        self.special_ids = frozenset({self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id})

    # ------------------------------------------------------------------ construction
    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 4000, min_frequency: int = 2, lowercase: bool = True
    ) -> MedTokenizer:
        """Learn a WordPiece vocabulary from ``texts``; the same texts give the same vocabulary.

        ``tokenizers``' own WordPieceTrainer breaks ties between equally frequent merges in
        hash-map order, so two runs on the same corpus give different vocabularies.  We learn
        the merges here instead (:func:`learn_wordpiece_vocab`: most frequent pair first, ties
        broken by the pair's text) and hand the vocabulary to the Rust WordPiece model, which
        does the actual tokenisation.
        """
        normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        pre = pre_tokenizers.BertPreTokenizer()
        words: Counter[str] = Counter()
        for text in texts:
            words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
        tokens = learn_wordpiece_vocab(words, vocab_size - len(SPECIAL_TOKENS), min_frequency)
        vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *tokens])}
        model = models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100)
        tok = _configure(Tokenizer(model), lowercase)
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
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TokenizerFileError(not_utf8(path, exc)) from None
        for i, line in enumerate(text.splitlines()):
            token = line.rstrip("\n")
            if token in vocab:
                continue  # keep the first id, as BERT's loader does
            vocab[token] = i
        if not vocab:
            raise ValueError(f"{path}: the vocabulary is empty")
        model = models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100)
        tok = _configure(Tokenizer(model), lowercase)
        return cls(tok)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MedTokenizer:
        """Load from a checkpoint directory (``tokenizer.json``, else ``vocab.txt``)."""
        directory = Path(directory)
        path = directory / TOKENIZER_NAME
        if path.is_file():
            try:
                return cls(Tokenizer.from_file(str(path)))
            except Exception as exc:  # tokenizers raises a bare Exception for a damaged file
                raise TokenizerFileError(f"{path}: not a readable tokenizer file ({exc})") from None
        return cls.from_vocab(directory / VOCAB_NAME)

    def save(self, directory: str | Path) -> None:
        from .fileio import atomic_write_text

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
        tokens: list[str] = []
        for i in ids:
            token = self._tok.id_to_token(i)
            if token is None:
                raise ValueError(f"token id {i} is not in the vocabulary (size {self._tok.get_vocab_size()})")
            tokens.append(token)
        return tokens


def learn_wordpiece_vocab(word_counts: Counter[str], size: int, min_frequency: int = 2) -> list[str]:
    """Deterministic WordPiece vocabulary learning by frequency-ranked merges (BPE-style).

    Words start as characters (continuations prefixed ``##``).  The most frequent adjacent
    pair is merged repeatedly (ties: the smaller ``(left, right)`` pair) until ``size``
    tokens exist or no pair occurs ``min_frequency`` times.  Returns the alphabet (sorted)
    followed by the merged tokens in merge order.  Pair counts are updated incrementally,
    so a corpus with tens of thousands of distinct words takes seconds.
    """
    items = sorted(word_counts.items())
    words = [[w[0]] + ["##" + c for c in w[1:]] for w, _ in items]
    counts = [c for _, c in items]
    alphabet = sorted({s for w in words for s in w})
    vocab = list(alphabet)
    known = set(vocab)
    pair_counts: defaultdict[tuple[str, str], int] = defaultdict(int)
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += counts[i]
            where[pair].add(i)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocab) < size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:
            continue  # stale entry
        if -neg < min_frequency:
            break
        left, right = pair
        merged = left + right[2:]
        changed: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            w, c = words[i], counts[i]
            for p in zip(w, w[1:]):
                pair_counts[p] -= c
                changed.add(p)
            j, out = 0, []
            while j < len(w):
                if j + 1 < len(w) and w[j] == left and w[j + 1] == right:
                    out.append(merged)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):
                pair_counts[p] += c
                where[p].add(i)
                changed.add(p)
        pair_counts.pop(pair, None)
        for p in changed:
            if pair_counts.get(p, 0) > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                pair_counts.pop(p, None)
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
    return vocab
