"""Flag the animals of new camera-trap images as in-distribution or OOD (classifier + CAE of stages 1-3).

    python detect.py FOLDER_OR_MEGADETECTOR_JSON [--exp digits | --cae CHECKPOINT] [--out X.csv]
    torchrun --nproc_per_node=4 detect.py ...        # each process takes a share of the images

Scores each image of a folder, or each animal box of a MegaDetector file, and writes X.csv, X.json
(MegaDetector format, a flagged detection classified as --unknown-label first) and the review page X.html.
The same command continues an interrupted run. Paths given on the command line are relative to the
working directory; the defaults made from --exp are the repository's, from any directory.
"""
import argparse
from pathlib import Path

from wildcapture.detection import SCORES
from wildcapture.errors import ConfigError, exit_on_user_error
from wildcapture.paths import resolve_path


def cae_path(given: Path | None, exp: str) -> Path:
    """The CAE checkpoint to use: `given` (--cae) relative to the working directory, else the repository's
    weights/EXP/cae/best.pth. ConfigError for a relative --cae found only in the repository (as earlier
    versions resolved it)."""
    if given is None:
        return resolve_path(f"weights/{exp}/cae/best.pth")
    if not given.exists() and not given.is_absolute() and resolve_path(given).is_file():
        raise ConfigError(f"--cae {given}: not found in the working directory {Path.cwd()} (command-line paths "
                          f"are relative to it); give {resolve_path(given)}")
    return given.resolve()


def _parser() -> argparse.ArgumentParser:
    """The command line of detect.py."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="folder of images, or a MegaDetector batch-output .json")
    parser.add_argument("--exp", default="digits", help="experiment whose CAE to use (default: digits)")
    parser.add_argument("--cae", type=Path, default=None, help="CAE checkpoint, relative to the working directory "
                        "(default: the repository's weights/EXP/cae/best.pth)")
    parser.add_argument("--out", type=Path, default=None, help="output CSV, relative to the working directory "
                        "(default: the repository's results/EXP/detections.csv); the JSON goes beside it")
    parser.add_argument("--threshold", type=float, default=None, help="OOD threshold (default: the one stage 3 "
                        "stored for the --score, accepting 95%% of val_id images)")
    parser.add_argument("--score", default="cae", help=f"{' | '.join(SCORES)}: ood_score is the CAE's "
                        "reconstruction error (cae, the default), or the score of the fusion detector stage 3 "
                        "stored (fusion, e.g. cae+mahalanobis), with its own threshold")
    parser.add_argument("--md-threshold", type=float, default=0.2, help="MegaDetector confidence an animal box "
                        "needs to be scored (default 0.2)")
    parser.add_argument("--crop-margin", type=float, default=0.0, help="fraction of a box's size added on each "
                        "side of its crop (default 0)")
    parser.add_argument("--image-root", type=Path, default=None, help="folder MegaDetector's file paths are "
                        "relative to (default: the JSON's folder)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--precision", default="auto", help="the classifier's: auto (bf16 on CUDA with bf16, fp16 on "
                        "older CUDA, bf16 on CPUs with native bf16, else fp32; the default) | fp32 | bf16")
    parser.add_argument("--decode", default="cpu", help="where JPEGs are decoded: cpu "
                        "(DataLoader workers, the default) | gpu (nvJPEG on the CUDA device, batched; workers only "
                        "read the files; other formats and EXIF-rotated JPEGs still decode on the CPU)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader processes that decode the images "
                        "(default: the available CPUs but one, at most 8)")
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="items between checkpoints (default 1000)")
    parser.add_argument("--unknown-label", default="unknown", help="classification category of a flagged "
                        "detection in X.json and the CSV's label (default: unknown)")
    parser.add_argument("--no-html", action="store_true", help="do not write the review page X.html and X_review/")
    parser.add_argument("--export-crops", type=Path, default=None, metavar="DIR", help="write each flagged crop "
                        "as DIR/<unknown label>/*.jpg (full resolution, with --crop-margin) and DIR/manifest.csv")
    parser.add_argument("--export-all", action="store_true", help="with --export-crops, also write the other "
                        "crops under DIR/<predicted class>/")
    parser.add_argument("--overwrite", action="store_true", help="start afresh instead of continuing an "
                        "interrupted run; replace finished outputs of the other --score")
    parser.add_argument("--check", action="store_true", help="check the options, the input (read through) and the "
                        "models, print the files the run would write, and exit (0, or 2 with the problem) without "
                        "writing anything")
    return parser


def main() -> None:
    """Parse the command line, then load the models (torch is imported only now) and score the images."""
    args = _parser().parse_args()
    out = args.out.resolve() if args.out else resolve_path(f"results/{args.exp}/detections.csv")
    with exit_on_user_error(outputs="--out"):
        cae = cae_path(args.cae, args.exp)
        from wildcapture.detection.run import DetectOptions, check, detect

        options = DetectOptions(batch_size=args.batch_size, device=args.device, threshold=args.threshold,
                                workers=args.workers, md_threshold=args.md_threshold, crop_margin=args.crop_margin,
                                image_root=args.image_root.resolve() if args.image_root else None,
                                checkpoint_every=args.checkpoint_every, overwrite=args.overwrite, score=args.score,
                                unknown_label=args.unknown_label, html=not args.no_html,
                                export_crops=args.export_crops.resolve() if args.export_crops else None,
                                export_all=args.export_all, precision=args.precision,
                                decode=args.decode)
        if args.check:
            from wildcapture.cli import print_plan

            print_plan({}, check(args.source.resolve(), cae, out, options))
            return
        summary = detect(args.source.resolve(), cae, out, options)
    if summary is not None:
        page = "" if args.no_html else f" and {out.with_suffix('.html')}"
        print(f"{summary.line()}; wrote {out}, {out.with_suffix('.json')}{page}")


if __name__ == "__main__":
    main()
