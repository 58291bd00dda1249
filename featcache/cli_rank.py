"""``featcache rank``: which backbone, input size and layer, ranked on the user's own data."""

from __future__ import annotations

import argparse


def _rank_args(p: argparse.ArgumentParser) -> None:
    from .cli_finetune import _ft_options
    from .rank import DEFAULT_RANK_BUDGETS

    p.add_argument("source", help="builtin:NAME, a folder of class subfolders, or a CSV manifest")
    p.add_argument("--backbones", required=True,
                   help="comma-separated backbones (timm:NAME, torchvision:NAME, aliases); NAME=FILE or NAME=random "
                        "sets one backbone's weights")
    p.add_argument("--image-sizes", default=None, help="comma-separated input sizes in pixels, or 'native' "
                                                       "(default: each backbone's native size)")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: pooled)")
    p.add_argument("--budgets", default=",".join(map(str, DEFAULT_RANK_BUDGETS)),
                   help="labels per class for the probe, 'all' for every train row (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="label-budget draws per probe (default: %(default)s)")
    p.add_argument("--no-random-baseline", dest="random_baseline", action="store_false",
                   help="no random-init floor of the first backbone")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="first score every candidate by LogME on N images, then extract only the best --keep")
    p.add_argument("--keep", type=int, default=None, metavar="K", help="candidates kept after the --sample pass")
    p.add_argument("--finetune-top", type=int, default=0, metavar="K",
                   help="hand the best K candidates to compare (heads vs fine-tuning) on the same split")
    p.add_argument("--limit", type=int, default=None, help="use a stratified subset of N samples of the source")
    p.add_argument("--out", default=None, help="output folder (default: data/rank/ranking)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into --out even if it holds files that are not a featcache ranking")
    _ft_options(p)  # --device, --precision and --workers serve the extractions too


def _cmd_rank(a: argparse.Namespace) -> int:
    from .cli_finetune import _ft
    from .rank import rank

    extract = {"precision": a.precision, "device": a.device, "workers": a.workers}
    res = rank(a.source, backbones=a.backbones, image_sizes=a.image_sizes, layers=a.layers, budgets=a.budgets,
               seeds=a.seeds, out=a.out, random_baseline=a.random_baseline, sample=a.sample, keep=a.keep,
               finetune_top=a.finetune_top, limit=a.limit, extract_options=extract, overwrite=a.overwrite,
               quiet=a.quiet, **(_ft(a) if a.finetune_top else {}))
    if not a.quiet:
        print(res.recommendation)
        print(f"ranking: {res.folder / 'ranking.html'} (and ranking.json, ranking.md, ranking_cost.png)")
    return 0


COMMANDS = [
    ("rank", "rank backbones x input sizes x layers on your data: LogME, the measured linear probe, and their cost",
     "examples:\n  python -m featcache rank builtin:fashion-mnist --limit 3000 --backbones efficientnet_lite0,"
     "efficientnet_lite1,efficientnet_lite2 --image-sizes 128 --out data/rank/fm\n"
     "  python -m featcache rank photos/ --backbones efficientnet_lite0,timm:resnet50 --sample 500 --keep 1\n",
     _rank_args, _cmd_rank),
]
