#!/usr/bin/env bash
# The main job on the embedded default: Fashion-MNIST (5,000-image stratified subset, official split kept)
# through the default backbone (EfficientNet-Lite0, packaged ImageNet weights) at 128 px, into a feature store.
source "$(dirname "$0")/env.sh"
SOURCE="builtin:fashion-mnist"
if ! python -c "from featcache.sources import open_source; open_source('$SOURCE')" 2>/dev/null; then
  echo "[featcache] Fashion-MNIST not found; running on scikit-learn's digits instead" >&2
  SOURCE="builtin:digits"
fi
STORE="data/stores/main.h5"
python -m featcache extract "$SOURCE" --limit 5000 --image-size 128 --store "$STORE" "$@"
python -m featcache info "$STORE"
