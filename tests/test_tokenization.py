from __future__ import annotations

from medvill.tokenization import MedTokenizer

CORPUS = [
    "There is a small left pleural effusion.",
    "No pneumothorax. The heart is mildly enlarged.",
    "Endotracheal tube terminates 4 cm above the carina.",
    "Right lower lobe consolidation, cannot exclude pneumonia.",
] * 20


def test_training_is_deterministic_and_has_bert_specials():
    a = MedTokenizer.train(CORPUS, vocab_size=200, min_frequency=1)
    b = MedTokenizer.train(CORPUS, vocab_size=200, min_frequency=1)
    assert a.get_vocab() == b.get_vocab()
    assert (a.pad_id, a.unk_id, a.cls_id, a.sep_id, a.mask_id) == (0, 1, 2, 3, 4)
    ids = a.encode("Small left pleural effusion.")
    assert a.special_ids.isdisjoint(ids)
    assert a.decode(ids) == "small left pleural effusion."


def test_save_and_reload_roundtrip(tmp_path):
    tok = MedTokenizer.train(CORPUS, vocab_size=150, min_frequency=1)
    tok.save(tmp_path)
    assert (tmp_path / "vocab.txt").is_file() and (tmp_path / "tokenizer.json").is_file()
    again = MedTokenizer.from_pretrained(tmp_path)
    from_vocab = MedTokenizer.from_vocab(tmp_path / "vocab.txt")
    text = "Cannot exclude a right pneumothorax; ETT in place."
    assert again.encode(text) == tok.encode(text) == from_vocab.encode(text)
    lines = (tmp_path / "vocab.txt").read_text().splitlines()
    assert len(lines) == tok.vocab_size and lines[tok.mask_id] == "[MASK]"


def test_unknown_words_map_to_unk():
    tok = MedTokenizer.train(["aaa bbb"] * 5, vocab_size=30, min_frequency=1)
    assert tok.encode("zzz") == [tok.unk_id]
