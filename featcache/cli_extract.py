"""Sub-commands that make and inspect stores: extract, info, backbones, layers."""

from __future__ import annotations

import argparse

from .extractor import DTYPES, FINGERPRINTS
from .runtime import PRECISIONS
from .sources import LABELED_TASKS
from .text_encoders import POOLINGS

EXTRACT_EXAMPLES = """examples:
  python -m featcache extract                                  # Fashion-MNIST, EfficientNet-Lite0
  python -m featcache extract builtin:fashion-mnist --limit 5000 --image-size 128
  python -m featcache extract photos/ --store data/photos.h5   # photos/<class>/<image>
  python -m featcache extract manifest.csv --label-col target --layers pooled,blocks.4
  python -m featcache extract builtin:digits --backbone torchvision:resnet18 --weights resnet18.pth
  python -m featcache extract builtin:rotten-tomatoes                 # review snippets, all-MiniLM-L6-v2
  python -m featcache extract reviews.csv --text-col body --group-col product --backbone hf:models/my-bert
  python -m featcache extract reviews.jsonl --pooling cls --max-length 128 --layers pooled,layer.4
"""


def _extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", default=None,
                   help="folder of class subfolders, CSV manifest (image paths, or a text column), JSONL of texts, "
                        "or builtin:fashion-mnist|builtin:digits|builtin:rotten-tomatoes "
                        "(default: builtin:fashion-mnist)")
    p.add_argument("--store", help="output HDF5 file (default: data/stores/<source>_<backbone>.h5)")
    p.add_argument("--backbone", default=None,
                   help="timm:NAME or torchvision:NAME (default: efficientnet_lite0, i.e. timm:tf_efficientnet_lite0 "
                        "with the packaged ImageNet weights); for texts hf:PATH_OR_NAME, a Hugging Face model folder "
                        "(default: hf:all-MiniLM-L6-v2, packaged)")
    p.add_argument("--weights", help="state dict file, or 'random' for an untrained baseline "
                                     "(default: torch hub cache, HF cache, then packaged weights)")
    p.add_argument("--layers", default=None,
                   help="comma-separated layers (default: pooled, the penultimate embedding); "
                        "see `featcache layers BACKBONE`")
    p.add_argument("--image-size", type=int, default=None, help="input size in pixels (default: the weights' own)")
    p.add_argument("--batch-size", default="auto",
                   help="rows per forward pass, or auto (default): the fastest size measured on this machine for "
                        "this backbone, input size and precision (cached; see `featcache info STORE`)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes (default: cores - 1 on CUDA; on a CPU of up to 4 cores 0, "
                        "where decoding inline is faster)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help="autocast precision; auto = bf16 where the hardware has it natively, else fp32")
    p.add_argument("--dtype", default=DTYPES[0], choices=list(DTYPES),
                   help="stored feature dtype (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="take a stratified, deterministic subset of N samples")
    p.add_argument("--fingerprint", default=FINGERPRINTS[0], choices=list(FINGERPRINTS),
                   help="how a changed input file is detected: stat (size and modification time, fast; default) or "
                        "content (SHA-256 of every file: for copies and filesystems where times lie)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable input instead of recording it")
    p.add_argument("--overwrite", action="store_true", help="replace a store made from other inputs or settings")
    p.add_argument("--commit-every", type=float, default=5.0, metavar="SECONDS",
                   help="make finished rows durable at least this often (default: 5)")
    g = p.add_argument_group("CSV manifests")
    g.add_argument("--path-col", default="path")
    g.add_argument("--label-col", default="label")
    g.add_argument("--split-col", default=None, help="column with train/val/test (default: 'split' if present)")
    g.add_argument("--group-col", default=None, help="column of group ids (e.g. patient) for grouped splits")
    g.add_argument("--task", default="auto", choices=["auto", *LABELED_TASKS],
                   help="auto: non-integer numbers are regression targets, anything else classes")
    t = p.add_argument_group("texts (CSV with a text column, JSONL)")
    t.add_argument("--text-col", default=None,
                   help="the column of texts (default: text; a CSV with a text column and no --path-col column is "
                        "text, and naming --text-col makes any CSV text)")
    t.add_argument("--id-col", default=None, help="column of unique ids (default: row numbers)")
    t.add_argument("--pooling", default="auto", choices=list(POOLINGS),
                   help="auto: the model's own sentence-transformers pooling if it has one, else mean over tokens")
    t.add_argument("--normalize", default=None, action=argparse.BooleanOptionalAction,
                   help="L2-normalise the vectors (default: as the model's sentence-transformers modules say)")
    t.add_argument("--max-length", type=int, default=None, help="tokens per text, longer ones truncated "
                                                                "(default: the model's own limit)")


def _cmd_extract(a: argparse.Namespace) -> int:
    from .extractor import extract
    from .launch import Launch

    res = extract(
        a.source, a.store, backbone=a.backbone, weights=a.weights, layers=a.layers, image_size=a.image_size,
        batch_size=a.batch_size, workers=a.workers, device=a.device, precision=a.precision, dtype=a.dtype,
        limit=a.limit, strict=a.strict, overwrite=a.overwrite, quiet=a.quiet, commit_interval=a.commit_every,
        path_col=a.path_col, label_col=a.label_col, split_col=a.split_col, group_col=a.group_col, task=a.task,
        fingerprint=a.fingerprint, distributed=Launch.from_env() is not None, text_col=a.text_col, id_col=a.id_col,
        pooling=a.pooling, normalize=a.normalize, max_length=a.max_length,
    )
    launch = Launch.from_env()
    if launch is None or launch.is_main:  # one summary per launch, from the rank that assembled the store
        _say(a, str(res))
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from .describe import describe

    print(describe(a.store))
    return 0


def _cmd_backbones(a: argparse.Namespace) -> int:
    from .backbones import known_backbones

    rows = known_backbones()
    width = max(len(n) for n, _ in rows)
    for name, status in rows:
        print(f"{name:<{width}}  {status}")
    print("\nAny timm or torchvision model name works: timm:NAME, torchvision:NAME "
          "(timm.list_models(), torchvision.models.list_models()).")
    print("Texts: hf:PATH_OR_NAME, a Hugging Face or sentence-transformers model folder (default "
          "hf:all-MiniLM-L6-v2, offline with the text extra); `featcache layers hf:...` lists its layers.")
    return 0


def _cmd_layers(a: argparse.Namespace) -> int:
    from .backbones import list_layers
    from .text_encoders import is_text_backbone, list_text_layers

    for name, dim in list_text_layers(a.backbone) if is_text_backbone(a.backbone) else list_layers(a.backbone,
                                                                                                    all_nodes=a.all):
        print(f"{name}\t{dim}")
    return 0


def _say(a: argparse.Namespace, text: str) -> None:
    if not getattr(a, "quiet", False):
        print(text)


COMMANDS = [
    ("extract", "run a frozen backbone over a dataset into an HDF5 feature store", EXTRACT_EXAMPLES,
     _extract_args, _cmd_extract),
    ("info", "print a store's layout, counts, splits, provenance and failures",
     "examples:\n  python -m featcache info data/stores/fashion-mnist_tf_efficientnet_lite0.h5\n",
     lambda p: p.add_argument("store"), _cmd_info),
    ("backbones", "list well-known backbones and whether their weights are available offline",
     "examples:\n  python -m featcache backbones\n", lambda p: None, _cmd_backbones),
    ("layers", "list a backbone's layer names (for --layers) with their embedding size",
     "examples:\n  python -m featcache layers\n  python -m featcache layers torchvision:resnet18 --all\n",
     lambda p: (p.add_argument("backbone", nargs="?", default=None),
                p.add_argument("--all", action="store_true", help="every graph node, not just the stages")),
     _cmd_layers),
]
