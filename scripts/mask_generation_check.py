"""Scientific check from the paper: does a Bi-pre-trained model generate much worse than S2S/BAR?

Pre-trains one model per mask scheme on the demo's synthetic data (demo settings of the chosen
preset), fine-tunes report generation from each (always under the S2S mask, as the paper does),
evaluates free-running generation on the test split with bootstrap resamples, and writes a
paper-style table with t-tests against the first scheme.

    python scripts/mask_generation_check.py --output gen-check --masks bar s2s bi
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.console import Console

from medvill.config import load_config
from medvill.data.registry import synthetic_root
from medvill.recipes.compare import compare_runs
from medvill.recipes.demo import PLANS, _mask_name, _with
from medvill.recipes.evaluate import run_evaluation
from medvill.recipes.finetune import run_finetuning
from medvill.recipes.pretrain import run_pretraining


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=Path("gen-check"))
    ap.add_argument("--preset", default="small")
    ap.add_argument("--masks", nargs="+", default=["bar", "s2s", "bi"])
    ap.add_argument("--bootstrap", type=int, default=30)
    args = ap.parse_args()
    console = Console()
    os.environ.setdefault("MEDVILL_CACHE", str(args.output / "cache"))
    cfg = load_config(args.preset, None, [])
    plan = PLANS[args.preset]
    pre_steps, ft_steps = plan.pretrain_steps, plan.finetune_steps["generation"]
    eval_every = max(1, int(ft_steps * plan.eval_fraction))
    cfg.data.root = str(synthetic_root(cfg.data.synthetic_n, cfg.model.image_size, cfg.data.synthetic_seed))
    evals = []
    for mask in args.masks:
        pre = args.output / f"pretrain-{mask}"
        run_pretraining(_with(cfg, f"pretrain.mask={mask}", f"train.max_steps={pre_steps}"), pre, console=console)
        fcfg = _with(cfg, f"train.max_steps={ft_steps}", f"train.eval_every={eval_every}",
                     f"train.length_grouping={plan.length_grouping}")
        ft = args.output / f"generation-{mask}"
        run_finetuning("generation", fcfg, str(pre), ft, console=console)
        metrics = run_evaluation("generation", ft, fcfg, split="test", n_bootstrap=args.bootstrap)
        ev = args.output / "eval" / f"generation-{mask}"
        ev.mkdir(parents=True, exist_ok=True)
        (ev / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        evals.append(f"MedViLL-{_mask_name(mask)}={ev}")
    table = compare_runs(evals, reference=f"MedViLL-{_mask_name(args.masks[0])}")
    columns = ["bleu4", "ce_f1", "ce_f1_macro", "ce_f1_example", "perplexity"]
    (args.output / "results.md").write_text(table.to_markdown(metrics=columns) + "\n")
    console.print(table.to_markdown(metrics=columns))


if __name__ == "__main__":
    main()
