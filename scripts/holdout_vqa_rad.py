"""Make a VQA-RAD folder with a held-out test split carved from the training questions.

For machines that only have VQA-RAD's training split (e.g. the MEVF ``trainset.json``): a
deterministic hash holds out a share of the questions, written as ``testset.json``; images are
symlinked, never copied.  ``--by image`` (default) holds out whole images (no image in both
parts: questions about unseen images, stricter than the official split); ``--by question``
holds out single questions, so held-out questions ask about images seen in training with other
questions, as in the official VQA-RAD test split (451 questions about the training images).
The official test split should be used whenever it is available.

    python scripts/holdout_vqa_rad.py --root ../shared/data/vqa_rad --output /tmp/vqa_rad_holdout --fraction 0.2
    python scripts/holdout_vqa_rad.py --root ../shared/data/vqa_rad --output /tmp/vqa_rad_q \
        --by question --fraction 0.15
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="VQA-RAD folder with trainset.json and images/")
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--fraction", type=float, default=0.2, help="share of images (or questions) held out for test")
    ap.add_argument("--by", choices=("image", "question"), default="image",
                    help="hold out whole images, or single questions (as the official split)")
    args = ap.parse_args()
    rows = json.loads((args.root / "trainset.json").read_text())

    def held_out(row: dict) -> bool:
        key = row["image_name"] if args.by == "image" else f"{row['qid']}:{row['question']}"
        digest = hashlib.sha256(f"holdout:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < args.fraction

    train = [r for r in rows if not held_out(r)]
    test = [r for r in rows if held_out(r)]
    args.output.mkdir(parents=True, exist_ok=False)
    (args.output / "trainset.json").write_text(json.dumps(train))
    (args.output / "testset.json").write_text(json.dumps(test))
    (args.output / "images").symlink_to((args.root / "images").resolve(), target_is_directory=True)
    print(f"{len(train)} training and {len(test)} held-out questions "
          f"({len({r['image_name'] for r in test})} held-out images) -> {args.output}")


if __name__ == "__main__":
    main()
