"""Flag new images as in-distribution or OOD with a trained classifier + CAE (stages 1-3).

    python detect.py FOLDER [--exp digits | --cae weights/EXP/cae/best.pth] [--out detections.csv]

Writes a CSV with one row per image: image, predicted_class, confidence (softmax max),
ood_score (CAE reconstruction error; higher = more OOD), ood_flag (score > threshold) and the
threshold (by default the one stored by stage 3, which accepts 95% of val_id images).
"""
import argparse
from pathlib import Path

from wildcapture.cli import exit_on_user_error
from wildcapture.paths import resolve_path


def main() -> None:
    """Parse the command line, then load the models (torch is imported only now) and score the folder."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--exp", default="digits", help="experiment whose CAE to use (default: digits)")
    parser.add_argument("--cae", type=Path, default=None, help="CAE checkpoint (default: weights/EXP/cae/best.pth)")
    parser.add_argument("--out", type=Path, default=None, help="output CSV (default: results/EXP/detections.csv)")
    parser.add_argument("--threshold", type=float, default=None, help="override the stored OOD threshold")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes that decode the images")
    args = parser.parse_args()
    cae = resolve_path(args.cae or f"weights/{args.exp}/cae/best.pth")
    out = args.out or resolve_path(f"results/{args.exp}/detections.csv")
    with exit_on_user_error(outputs="--out"):
        from wildcapture.detect import detect
        from wildcapture.runtime import pick_device

        rows = detect(args.folder.resolve(), cae, out, args.batch_size, str(pick_device(args.device)), args.threshold,
                      args.workers)
    flagged = sum(r["ood_flag"] for r in rows)
    print(f"{len(rows)} images scored, {flagged} flagged OOD (threshold {rows[0]['threshold']:.4g}); wrote {out}")


if __name__ == "__main__":
    main()
