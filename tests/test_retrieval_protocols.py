"""Retrieval protocols beside the paper's trials: CheXpert 5x200 and the full test pool in two
stages (medvill.metrics.retrieval, medvill.tasks.retrieval), on hand-made labels and scores
where the answer is known, then through the evaluation and the command line with a tiny model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medvill.cli import app
from medvill.config import ConfigError, MaskScheme, load_config
from medvill.config.sections import RETRIEVAL_PROTOCOLS, EvalConfig
from medvill.data.records import Record, read_jsonl_records
from medvill.labels import labels_to_vector, positive_set
from medvill.metrics.retrieval import (
    CHEXPERT_5X200,
    eligible_5x200,
    group_ids,
    pool_ranking_metrics,
    rerank_top,
    select_5x200,
    stage1_order,
)
from medvill.modeling.heads import MedViLLForPretraining, MedViLLForRetrieval
from medvill.recipes.common import model_config_for
from medvill.recipes.compare import compare_runs
from medvill.tasks.registry import EvalContext
from medvill.tasks.retrieval import PairScorer, RetrievalTask, UnimodalEmbeddings, evaluate_retrieval, rank_pool
from medvill.tokenization import MedTokenizer

ATEL, CARDIO, CONSOL, EDEMA, EFFUSION = CHEXPERT_5X200


def vec(**named: float | None) -> np.ndarray:
    return labels_to_vector({name.replace("_", " "): v for name, v in named.items()})


# ----------------------------------------------------------------------------------- selection

def test_eligible_5x200_is_the_peers_rule():
    rows = [
        vec(Atelectasis=1),  # 0: Atelectasis
        vec(Cardiomegaly=1, Edema=0, Consolidation=0),  # 1: negatives are fine
        vec(Edema=1, No_Finding=1),  # 3: No Finding is not part of the rule
        vec(Pleural_Effusion=1, Pneumonia=None),  # 4: blank = not mentioned
        vec(Atelectasis=1, Cardiomegaly=1),  # two of the five
        vec(Consolidation=1, Support_Devices=1),  # another finding positive
        vec(Edema=1, Pneumonia=-1),  # uncertain elsewhere
        vec(Atelectasis=-1),  # uncertain itself
        vec(No_Finding=1),  # normal
        vec(),  # nothing mentioned
    ]
    assert eligible_5x200(np.stack(rows)).tolist() == [0, 1, 3, 4, -1, -1, -1, -1, -1, -1]
    with pytest.raises(ValueError, match=r"\(N, 14\)"):
        eligible_5x200(np.zeros((3, 5)))


def test_select_5x200_caps_each_class_seeds_the_draw_and_counts_what_it_found():
    rows = [vec(Atelectasis=1)] * 7 + [vec(Cardiomegaly=1)] * 3 + [vec(Pleural_Effusion=1)] * 2 + [vec(Edema=1,
                                                                                                    Fracture=1)]
    labels = np.stack(rows)
    sel = select_5x200(labels, per_class=5, seed=0)
    assert sel.selected == {ATEL: 5, CARDIO: 3, CONSOL: 0, EDEMA: 0, EFFUSION: 2}
    assert sel.eligible == {ATEL: 7, CARDIO: 3, CONSOL: 0, EDEMA: 0, EFFUSION: 2}
    assert sel.skipped == [CONSOL, EDEMA]
    assert len(set(sel.indices.tolist())) == 10 and set(sel.indices[:5]) <= set(range(7))
    assert sel.classes.tolist() == [0] * 5 + [1] * 3 + [4] * 2
    assert set(sel.indices[5:].tolist()) == {7, 8, 9, 10, 11}  # under the cap: every one
    again = select_5x200(labels, per_class=5, seed=0)
    assert np.array_equal(sel.indices, again.indices)
    draws = {tuple(select_5x200(labels, per_class=5, seed=s).indices[:5]) for s in range(8)}
    assert len(draws) > 1  # the seed picks which 5 of the 7
    # each class draws on its own: more Cardiomegaly studies leave the Atelectasis draw alone
    more = select_5x200(np.concatenate([labels, np.stack([vec(Cardiomegaly=1)] * 4)]), per_class=5, seed=0)
    assert np.array_equal(more.indices[:5], sel.indices[:5])
    with pytest.raises(ValueError, match="at least two"):
        select_5x200(np.stack([vec(Atelectasis=1)] * 4 + [vec(No_Finding=1)]))


# ----------------------------------------------------------------------------------- metrics

def test_pool_ranking_metrics_on_a_ranking_with_a_known_answer():
    groups = np.array([0, 1, 0, 1, 1, 0, 2, 2, 1, 0, 2, 1])
    order = np.array([[1, 0, 3, 6, 2, 4, 5, 7, 8, 9, 10, 11],  # query of group 0: relevant at ranks 2, 5, 7
                      [6, 7, 10, 0, 2, 5, 9, 1, 3, 4, 8, 11]])  # group 1: first relevant at rank 8
    m = pool_ranking_metrics(order, np.array([0, 1]), groups, hits=(1, 5, 10), precisions=(5, 10), mrr=True)
    assert m["hit@1"].tolist() == [0.0, 0.0]
    assert m["hit@5"].tolist() == [1.0, 0.0]
    assert m["hit@10"].tolist() == [1.0, 1.0]
    assert m["precision@5"].tolist() == [2 / 5, 0.0]
    assert m["precision@10"].tolist() == [4 / 10, 3 / 10]
    assert m["mrr"].tolist() == [1 / 2, 1 / 8]
    with pytest.raises(ValueError, match="no relevant candidate"):
        pool_ranking_metrics(order, np.array([0, 3]), groups)
    assert group_ids([frozenset({2}), frozenset(), frozenset({2}), frozenset({2, 5})]).tolist() == [0, 1, 0, 2]


def test_two_stage_reranks_only_stage_one_top_k_and_with_k_all_is_exhaustive():
    stage1 = np.array([[0.9, 0.8, 0.7, 0.1, 0.0]])  # stage 1 order: 0 1 2 3 4
    fused = np.array([[0.1, 0.5, 0.3, 9.0, 0.2]])  # candidate 3 is the fusion model's best
    tiebreak = np.arange(5)
    first = stage1_order(stage1, tiebreak)
    assert first.tolist() == [[0, 1, 2, 3, 4]]
    two = rerank_top(first, np.take_along_axis(fused, first[:, :3], axis=1), tiebreak)
    assert two.tolist() == [[1, 2, 0, 3, 4]]  # 3 never reached stage 2: it stays behind the top 3
    full = rerank_top(first, np.take_along_axis(fused, first, axis=1), tiebreak)
    assert full.tolist() == stage1_order(fused, tiebreak).tolist() == [[3, 1, 2, 4, 0]]
    # ties follow the tie-break permutation, in both stages
    flat = np.zeros((1, 4))
    assert stage1_order(flat, np.array([2, 0, 3, 1])).tolist() == [[1, 3, 0, 2]]
    assert rerank_top(np.array([[0, 1, 2, 3]]), flat[:, :3], np.array([2, 0, 3, 1])).tolist() == [[1, 0, 2, 3]]
    with pytest.raises(ValueError, match="do not cover"):
        rerank_top(first, np.zeros((1, 6)), tiebreak)


# ----------------------------------------------------------------------------------- config

def test_protocol_and_rerank_k_are_validated_by_name(tiny_cfg):
    cfg = load_config("tiny", None, ["eval.retrieval_protocol=full_pool, 5x200,trials", "eval.rerank_k=0"])
    assert cfg.eval.retrieval_protocols == ("full_pool", "5x200", "trials")
    assert tiny_cfg.eval.retrieval_protocols == ("trials",) and tiny_cfg.eval.rerank_k == 32
    assert RETRIEVAL_PROTOCOLS == ("trials", "5x200", "full_pool")
    listed = EvalConfig(retrieval_protocol=["5x200", " full_pool"])
    listed.validate()
    assert listed.retrieval_protocols == ("5x200", "full_pool")
    with pytest.raises(ConfigError, match="'pool' is not one of"):
        EvalConfig(retrieval_protocol=["trials", "pool"]).validate()
    for bad, message in (("eval.retrieval_protocol=5x100", "eval.retrieval_protocol: '5x100' is not one of"),
                         ("eval.retrieval_protocol=trials,trials", "names trials more than once"),
                         ("eval.retrieval_protocol=' , '", "eval.retrieval_protocol is empty"),
                         ("eval.rerank_k=-1", "eval.rerank_k must be >= 0")):
        with pytest.raises(ConfigError, match=message):
            load_config("tiny", None, [bad])


# ----------------------------------------------------------------------------------- a tiny model

SENTENCES = {ATEL: "bibasilar atelectasis", CARDIO: "the heart is enlarged", CONSOL: "right lower lobe consolidation",
             EDEMA: "mild pulmonary edema", EFFUSION: "small left pleural effusion"}
#: (labels, text): 6 Atelectasis, 6 Cardiomegaly, 5 Consolidation, 0 Edema, 5 Pleural Effusion eligible
POOL = ([({ATEL: 1}, SENTENCES[ATEL])] * 6 + [({CARDIO: 1, EDEMA: 0}, SENTENCES[CARDIO])] * 6
        + [({CONSOL: 1}, SENTENCES[CONSOL])] * 5 + [({EFFUSION: 1}, SENTENCES[EFFUSION])] * 5
        + [({ATEL: 1, CARDIO: 1}, SENTENCES[ATEL] + ". " + SENTENCES[CARDIO]),
           ({EDEMA: 1, "Pneumonia": -1}, SENTENCES[EDEMA] + ". cannot exclude pneumonia"),
           ({EFFUSION: 1, "Support Devices": 1}, SENTENCES[EFFUSION] + ". an endotracheal tube is in place"),
           ({"No Finding": 1}, "no acute cardiopulmonary process")])
SELECTED = {ATEL: 6, CARDIO: 6, CONSOL: 5, EDEMA: 0, EFFUSION: 5}


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> Path:
    """The hand-made test pool as a JSON-lines data set (images are random noise)."""
    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    rows = []
    for i, (labels, text) in enumerate(POOL):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), mode="L").save(root / f"p{i:02d}.png")
        rows.append({"id": f"p{i:02d}", "image": f"p{i:02d}.png", "text": f"pa view. {text}. case {i}.",
                     "split": "test", "labels": labels})
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def pool_records(pool_dir) -> list[Record]:
    return read_jsonl_records(pool_dir / "pool.jsonl", split="test")


def tiny_model(texts: list[str]) -> tuple[MedViLLForRetrieval, MedTokenizer]:
    cfg = load_config("tiny")
    tok = MedTokenizer.train(texts, cfg.tokenizer.vocab_size, 1, cfg.tokenizer.lowercase)
    torch.manual_seed(0)
    return MedViLLForRetrieval(model_config_for(cfg, tok), load_pretrained_backbone=False).eval(), tok


@pytest.fixture(scope="module")
def pool_model(pool_records):
    return tiny_model([r.text for r in pool_records])


def context(model, tok, records, *overrides: str) -> EvalContext:
    cfg = load_config("tiny", None, ["eval.n_candidates=10", *overrides])
    cfg = dataclasses.replace(cfg, model=model.config)
    return EvalContext(RetrievalTask(), model, tok, records, cfg, Path("."), n_bootstrap=5, seed=0)


def oracle(labels: list[np.ndarray]):
    """PairScorer.scores for a model that knows the answer: 2 for the true partner, 1 for a
    report with the image's positive label set, 0 otherwise."""
    sets = [positive_set(v) for v in labels]

    def scores(self, pairs, by_length=False):
        for i, j in pairs:
            self.cache[(i, j)] = 2.0 * (i == j) + 1.0 * (sets[i] == sets[j])
        return np.array([self.cache[p] for p in pairs])

    return scores


PAPER_KEYS = {f"{d}_{m}" for d in ("r2i", "i2r") for m in ("hit@5", "recall@5", "precision@5", "mrr")} | {"trials"}


def test_protocols_side_by_side_and_an_oracle_scores_perfectly(pool_records, pool_model, monkeypatch):
    model, tok = pool_model
    n = len(pool_records)
    # the default: the paper's trials, and nothing else
    assert set(evaluate_retrieval(context(model, tok, pool_records))) == PAPER_KEYS

    out = evaluate_retrieval(context(model, tok, pool_records, "eval.retrieval_protocol=trials,5x200,full_pool",
                                     "eval.rerank_k=4"))
    for d in ("i2r", "r2i"):
        assert {f"5x200_{d}_{m}" for m in ("hit@1", "hit@5", "hit@10", "precision@5", "precision@10")} <= set(out)
        assert {f"pool_{d}_{m}" for m in ("hit@1", "hit@5", "hit@10", "mrr", "label_hit@1", "label_hit@5",
                                          "label_hit@10", "label_mrr", "stage1_recall")} <= set(out)
    assert PAPER_KEYS <= set(out)
    assert all(0.0 <= m["mean"] <= 1.0 and m["n"] == 5 for k, m in out.items() if m["values"])
    info = out["5x200"]
    assert info["full"] == 22 and info["per_class"] == SELECTED and info["skipped"] == [EDEMA]
    assert info["values"] == [] and info["rerank_k"] == 4 and not info["exhaustive"]
    assert info["stage1"] == "non_crossing"
    assert 22 * 4 <= info["pair_scores"] <= 2 * 22 * 4 and info["exhaustive_pair_scores"] == 22**2
    pool = out["pool"]
    assert pool["full"] == n and n * 4 <= pool["pair_scores"] <= 2 * n * 4 < n * n
    assert pool["seconds"] >= pool["stage2_seconds"] > 0 and pool["stage1_seconds"] > 0

    # with scores that know the answer, exhaustive ranking is perfect in every protocol
    monkeypatch.setattr(PairScorer, "scores", oracle([r.labels for r in pool_records]))
    out = evaluate_retrieval(context(model, tok, pool_records, "eval.retrieval_protocol=5x200,full_pool",
                                     "eval.rerank_k=0"))
    for d in ("i2r", "r2i"):
        for m in ("hit@1", "hit@5", "hit@10", "precision@5"):
            assert out[f"5x200_{d}_{m}"]["full"] == 1.0, (d, m)
        assert out[f"5x200_{d}_precision@10"]["full"] == pytest.approx((12 * 6 / 10 + 10 * 5 / 10) / 22)
        for m in ("hit@1", "mrr", "label_hit@1", "label_mrr", "stage1_recall"):
            assert out[f"pool_{d}_{m}"]["full"] == 1.0, (d, m)
    assert out["pool"]["exhaustive"] and out["pool"]["pair_scores"] == n * n == out["pool"]["rerank_k"] ** 2
    assert out["pool"]["stage1"] is None

    # two stages with the oracle in stage 2: the true partner comes first exactly when stage 1 kept it
    out = evaluate_retrieval(context(model, tok, pool_records, "eval.retrieval_protocol=full_pool",
                                     "eval.rerank_k=3"))
    for d in ("i2r", "r2i"):
        assert out[f"pool_{d}_hit@1"]["full"] == out[f"pool_{d}_stage1_recall"]["full"] < 1.0


def test_stage_one_is_the_matching_head_under_the_non_crossing_mask(pool_records, pool_model):
    model, tok = pool_model
    scorer = PairScorer(model, pool_records, tok, model.config.image_size, model.config.max_text_len, batch_size=8)
    emb = UnimodalEmbeddings(scorer)
    assert emb.kind == "non_crossing"
    a, b = emb.summaries()
    # the joint Non-crossing pass over (image i, report j) scores w . (a_i * b_j) + bias
    pairs = [(0, 0), (0, 5), (3, 7), (9, 2)]
    ids, valid = scorer.reports([j for _, j in pairs])
    with torch.no_grad():
        joint = model(ids, valid, visual_features=scorer.features[[i for i, _ in pairs]],
                      scheme=MaskScheme.NON_CROSSING).logits
    w, bias = model.irm_head.weight[0].detach(), model.irm_head.bias.detach()
    assert torch.allclose(joint, torch.stack([(a[i] * b[j] * w).sum() for i, j in pairs]) + bias, atol=1e-5)
    sim = emb.similarity(np.arange(4), np.arange(6))
    expected = ((a - a.mean(0)) * w) @ (b - b.mean(0)).T  # centred on the records' mean
    assert sim.shape == (4, 6) and np.allclose(sim, expected[:4, :6].numpy(), atol=1e-6)
    # the image's embedding ignores the report and the report's the image: swap reports, images stay
    swapped = PairScorer(model, pool_records, tok, model.config.image_size, model.config.max_text_len, batch_size=8)
    swapped.text_ids = swapped.text_ids[::-1]
    other = UnimodalEmbeddings(swapped)
    other.compute()
    emb.compute()
    assert torch.allclose(other.images, emb.images, atol=1e-5)
    assert torch.allclose(other.reports, emb.reports.flip(0), atol=1e-5)


def test_stage_one_of_the_cnn_transformer_baseline_is_the_cosine_of_its_encoders(pool_records, pool_model):
    _, tok = pool_model
    torch.manual_seed(0)
    model = MedViLLForRetrieval(pool_model[0].config, load_pretrained_backbone=False, trunk="cnn_transformer").eval()
    scorer = PairScorer(model, pool_records, tok, model.config.image_size, model.config.max_text_len, batch_size=8)
    emb = UnimodalEmbeddings(scorer)
    assert emb.kind == "pooled_cosine"
    a, b = emb.summaries()
    expected = torch.nn.functional.normalize(a - a.mean(0), dim=-1) @ torch.nn.functional.normalize(
        b - b.mean(0), dim=-1).T
    assert np.allclose(emb.similarity(np.arange(6), np.arange(6)), expected[:6, :6].numpy(), atol=1e-6)
    out = evaluate_retrieval(context(model, tok, pool_records, "eval.retrieval_protocol=full_pool", "eval.rerank_k=5"))
    assert out["pool"]["stage1"] == "pooled_cosine" and 0.0 <= out["pool_i2r_mrr"]["mean"] <= 1.0


class RetrievalWithITC(MedViLLForRetrieval):
    """A retrieval model that kept pre-training's contrastive projections."""

    contrastive_embeddings = MedViLLForPretraining.contrastive_embeddings

    def __init__(self, config):
        super().__init__(config, load_pretrained_backbone=False)
        self.contrastive_dim = 8
        self.itc_image_proj = torch.nn.Linear(self.medvill.visual.out_channels, 8)
        self.itc_text_proj = torch.nn.Linear(config.hidden_size, 8)


def test_stage_one_uses_contrastive_projections_where_the_model_has_them(pool_records, pool_model):
    _, tok = pool_model
    torch.manual_seed(0)
    model = RetrievalWithITC(pool_model[0].config).eval()
    scorer = PairScorer(model, pool_records, tok, model.config.image_size, model.config.max_text_len, batch_size=8)
    emb = UnimodalEmbeddings(scorer)
    assert emb.kind == "itc"
    ids, valid = scorer.reports(list(range(len(pool_records))))
    with torch.no_grad():
        image, report = model.contrastive_embeddings(ids, valid, scorer.features)
    assert np.allclose(emb.similarity(np.arange(5), np.arange(7)), (image[:5] @ report[:7].T).numpy(), atol=1e-5)


def test_two_stage_with_k_pool_size_equals_exhaustive_on_synthetic_data(synthetic_root):
    records = read_jsonl_records(synthetic_root / "test.jsonl", split="test")
    model, tok = tiny_model([r.text for r in read_jsonl_records(synthetic_root / "train.jsonl", split="train")])
    scorer = PairScorer(model, records, tok, model.config.image_size, model.config.max_text_len, batch_size=16)
    n = len(records)
    groups = group_ids([positive_set(r.labels) for r in records])

    def measure(queries, order, first, k):  # the whole ranking, and the metrics
        return {**{f"rank{r}": order[:, r].astype(float) for r in range(n)},
                **pool_ranking_metrics(order, groups[queries], groups, mrr=True)}

    exhaustive = rank_pool(scorer, np.arange(n), 0, 0, measure)
    two = rank_pool(scorer, np.arange(n), n, 0, measure)
    assert exhaustive.exhaustive and not two.exhaustive and two.k == exhaustive.k == n
    assert exhaustive.metrics.keys() == two.metrics.keys()
    for name, values in exhaustive.metrics.items():
        assert np.array_equal(values, two.metrics[name]), name
    assert two.pair_scores == exhaustive.pair_scores == n * n
    # each direction ranks by its own column of the score matrix (image i, report j)
    s = scorer.scores([(i, j) for i in range(n) for j in range(n)]).reshape(n, n)
    rows = np.arange(n)
    assert np.array_equal(s[rows, exhaustive.metrics["i2r_rank0"].astype(int)], s.max(axis=1))
    assert np.array_equal(s[exhaustive.metrics["r2i_rank0"].astype(int), rows], s.max(axis=0))
    # equal scores rank in the order of the seeded tie-break permutation, not by pool index
    flat = PairScorer(model, records, tok, model.config.image_size, model.config.max_text_len, batch_size=16)
    flat.scores = lambda pairs, by_length=False: np.zeros(len(pairs))
    tied = rank_pool(flat, np.arange(n), 0, 5, measure)
    expected = np.argsort(np.random.default_rng(5).permutation(n))
    for d in ("i2r", "r2i"):
        assert np.array_equal(np.stack([tied.metrics[f"{d}_rank{r}"] for r in range(n)], axis=1),
                              np.broadcast_to(expected, (n, n)))
    few = rank_pool(scorer, np.arange(n), 3, 0, measure)
    assert few.pair_scores <= 2 * n * 3 < n * n
    assert not all(np.array_equal(v, few.metrics[k]) for k, v in exhaustive.metrics.items() if k.startswith("i2r"))


def test_evaluate_command_runs_the_protocols_and_compare_tables_them(pool_dir, pool_records, pool_model, tmp_path):
    model, tok = pool_model
    ckpt = model.save_pretrained(tmp_path / "ckpt", tokenizer=tok)
    args = ["evaluate", "retrieval", "--checkpoint", str(ckpt), "--dataset", "jsonl", "--root",
            str(pool_dir / "pool.jsonl"), "--preset", "tiny", "--bootstrap", "3"]
    runner = CliRunner()
    result = runner.invoke(app, [*args, "--output", str(tmp_path / "ev"), "--set",
                                 "eval.retrieval_protocol=5x200,full_pool", "--set", "eval.rerank_k=5"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert "5x200_i2r_hit@5" in metrics and "pool_r2i_hit@1" in metrics and "r2i_mrr" not in metrics
    assert metrics["5x200"]["per_class"] == SELECTED and metrics["pool"]["rerank_k"] == 5
    table = compare_runs([str(tmp_path / "ev")])
    assert "5x200_r2i_precision@10" in table.metrics and "pool_i2r_label_mrr" in table.metrics
    assert "5x200" not in table.metrics and "pool" not in table.metrics  # information, not columns
    bad = runner.invoke(app, [*args, "--output", str(tmp_path / "bad"), "--set", "eval.retrieval_protocol=top100"])
    assert bad.exit_code == 2 and "eval.retrieval_protocol" in bad.output



def test_pool_benchmark_quick(synthetic_root, tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_retrieval_pool.py"
    spec = importlib.util.spec_from_file_location("bench_retrieval_pool", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "pool.json"
    assert bench.main(["--quick", "--root", str(synthetic_root), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    n = data["pool"]
    rows = data["results"]
    assert [(r["mode"], r["k"]) for r in rows] == [("exhaustive", n), ("two-stage", 2), ("two-stage", 8),
                                                   ("two-stage", n)]
    assert rows[0]["pair_scores"] == rows[-1]["pair_scores"] == n * n and rows[1]["pair_scores"] <= 2 * n * 2
    assert rows[-1]["i2r_recall"] == rows[-1]["r2i_recall"] == 1.0 and rows[-1]["same_top1"] == {"i2r": 1.0,
                                                                                                 "r2i": 1.0}
    assert "command: python benchmarks/bench_retrieval_pool.py --quick" in capsys.readouterr().out
