"""How well can the demo's CNN read the synthetic findings on its own?  A ceiling for image reading.

Trains the ``small`` preset's CNN (``small_cnn``, 48 channels) with a linear head on mean-pooled
features directly on the 14 labels (binary cross-entropy, AdamW, one-cycle schedule) at one
image size, and prints the validation micro AUROC along the way and the per-label AUROC at the
end.  MedViLL's ``image_only_auroc_micro`` (classification from the image alone) can be read
against it: a gap means the way the CNN is trained inside MedViLL, not the resolution, limits
image reading.

    python scripts/image_probe.py --image-size 64 --steps 2000

``--checkpoint DIR`` instead measures the CNN inside a medvill checkpoint (pre-trained or
fine-tuned), frozen: a logistic regression per label on its mean-pooled features of the training
split, scored on validation (a linear probe; the demo's pre-trained BAR model: 0.945 with the
contrastive temperature 0.1, 0.949 with 0.05; a random CNN 0.833).

    python scripts/image_probe.py --checkpoint demo-output/pretrain-bar
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medvill.config import preset_config
from medvill.data.registry import synthetic_root
from medvill.data.splits import load_split
from medvill.data.transforms import load_image
from medvill.labels import CHEXPERT_OBSERVATIONS
from medvill.modeling.visual import SmallCNN


def split_tensors(cfg, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    records = load_split(cfg, split)
    images = torch.stack([load_image(r.image, cfg.model.image_size) for r in records])
    labels = torch.tensor(np.stack([(r.labels == 1).astype(np.float32) for r in records]))
    return images, labels


def linear_probe(checkpoint: str, cfg, splits) -> None:
    from safetensors.torch import load_file
    from sklearn.linear_model import LogisticRegression

    from medvill.modeling.pretrained import checkpoint_model_config

    mcfg = checkpoint_model_config(checkpoint)
    if mcfg.backbone != "small_cnn":
        raise SystemExit(f"{checkpoint}: --checkpoint probes the small_cnn backbone, this one is {mcfg.backbone}")
    state = load_file(f"{checkpoint}/model.safetensors")
    prefix = next(k for k in state if k.endswith("trunk.body.0.weight"))[: -len("body.0.weight")]
    cnn = SmallCNN(mcfg.small_cnn_channels)
    cnn.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    cnn.eval()
    (x_train, y_train), (x_val, y_val) = splits
    with torch.no_grad():
        f_train, f_val = (torch.cat([cnn(x[i:i + 256]).mean((2, 3)) for i in range(0, len(x), 256)]).numpy()
                          for x in (x_train, x_val))
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_val = (f_train - mean) / std, (f_val - mean) / std
    y_train, y_val = y_train.numpy().astype(int), y_val.numpy().astype(int)
    probs = np.zeros(y_val.shape)
    for j in range(y_train.shape[1]):
        if y_train[:, j].min() != y_train[:, j].max():
            probs[:, j] = LogisticRegression(max_iter=2000).fit(f_train, y_train[:, j]).predict_proba(f_val)[:, 1]
    print(f"{checkpoint}: linear probe of the pooled CNN features, validation micro AUROC "
          f"{roc_auc_score(y_val.ravel(), probs.ravel()):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", help="linear probe of this checkpoint's frozen CNN instead of training one")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    cfg = preset_config("small")
    cfg.model.image_size = args.image_size
    cfg.data.root = str(synthetic_root(cfg.data.synthetic_n, args.image_size, cfg.data.synthetic_seed))
    x_train, y_train = split_tensors(cfg, "train")
    x_val, y_val = split_tensors(cfg, "validate")
    if args.checkpoint:
        linear_probe(args.checkpoint, cfg, ((x_train, y_train), (x_val, y_val)))
        return
    cnn = SmallCNN(cfg.model.small_cnn_channels)
    head = nn.Linear(cnn.out_channels, y_train.shape[1])
    params = [*cnn.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)

    def validate() -> tuple[float, np.ndarray]:
        cnn.eval()
        with torch.no_grad():
            probs = torch.cat([head(cnn(x_val[i:i + 256]).mean((2, 3))) for i in range(0, len(x_val), 256)])
        cnn.train()
        probs, truth = probs.sigmoid().numpy(), y_val.numpy()
        present = truth.sum(0) > 0
        per_label = np.full(truth.shape[1], np.nan)
        per_label[present] = roc_auc_score(truth[:, present], probs[:, present], average=None)
        return float(roc_auc_score(truth.ravel(), probs.ravel())), per_label

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(x_train), (args.batch_size,), generator=gen)
        logits = head(cnn(x_train[idx]).mean((2, 3)))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, args.steps // 4) == 0 or step == args.steps:
            micro, per_label = validate()
            print(f"{args.image_size} px, step {step}: validation micro AUROC {micro:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    print("per-label validation AUROC:")
    for name, value in zip(CHEXPERT_OBSERVATIONS, per_label, strict=True):
        print(f"  {name:28s} {value:.3f}")


if __name__ == "__main__":
    main()
