#!/usr/bin/env bash
# The main job on the embedded default: Fashion-MNIST (5,000-image stratified subset, official split kept)
# through the default backbone (EfficientNet-Lite0, packaged ImageNet weights) at 128 px into a feature store,
# then the three classical heads, each with its regularisation chosen on the val split, then a small
# comparison of the heads against fine-tuning on the same splits (report and plots in data/compare/main/).
source "$(dirname "$0")/env.sh"
SOURCE="builtin:fashion-mnist"
if ! python -c "from featcache.sources import open_source; open_source('$SOURCE')" 2>/dev/null; then
  echo "[featcache] Fashion-MNIST not found; running on scikit-learn's digits instead" >&2
  SOURCE="builtin:digits"
fi
STORE="data/stores/main.h5"
python -m featcache extract "$SOURCE" --limit 5000 --image-size 128 --store "$STORE" "$@"
python -m featcache info "$STORE"
for HEAD in logreg svm ridge; do
  python -m featcache fit-head "$STORE" --head "$HEAD" --jobs 2 --out "data/heads/main_$HEAD.head"
done
python -m featcache compare "$STORE" --methods logreg,svm,ridge,linear,last-n,full,lp-ft --budgets 10,100 \
  --epochs 2 --time-budget 8 --out data/compare/main
echo "[featcache] store: $STORE; heads (with JSON metrics): data/heads/; report: data/compare/main/report.md"
