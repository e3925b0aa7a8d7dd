#!/usr/bin/env bash
# The strong adaptive attack (make_report's adaptive-strong and adaptive-known-seed runs) on a GPU box that has a
# copy of the working tree but neither ../shared nor the packages the box lacks.
#
#   bash scripts/gpu_strong_attack.sh prepare     here: the wheels (.whl/) and the subset of test scans the runs
#                                                 read, with its own split CSV (.cache/gpu-strong/, about 5 MB)
#   bash scripts/gpu_strong_attack.sh run         there (carry .whl and .cache/gpu-strong): the two runs on the
#                                                 GPU; the run folders go to $OUT/runs (or reports/runs)
#
# Settings (environment): DATA (default ../shared/data, prepare only), STRONG_LIMIT (default 200: the seeded
# class-stratified subset of the test split that `evaluate --limit` picks), ONLY (default both runs),
# STRONG_BATCH (scans attacked together, default 16 on the GPU), DEVICE (default cuda), SKIP_INSTALL=1 (the
# packages are there already). The attack cache goes to $OUT/attacks, so a run cut short comes back with the
# batches it finished: carry them into the next run as .cache/attacks.
set -euo pipefail
cd "$(dirname "$0")/.."
STRONG_LIMIT=${STRONG_LIMIT:-200}
HERE=.cache/gpu-strong
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

case "${1:-}" in
prepare)
  DATA=${DATA:-../shared/data}
  [ -d .whl ] || bash ../shared/tools/gpu-wheels.sh
  rm -rf "$HERE" && mkdir -p "$HERE/data"
  "$PY" - "$DATA" "$HERE" "$STRONG_LIMIT" <<'EOF'
import csv, shutil, sys
from pathlib import Path

from medfedpure.evaluation import load_scans

data, here, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
scans = load_scans(data, "test", "pretrained/split.csv", limit=limit, seed=0)  # evaluate's own subset
keep = set(scans.names)
with open("pretrained/split.csv", newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["split"] == "test" and r["path"] in keep]
    fields = list(rows[0].keys())
with open(here / "split.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
for r in rows:
    (here / "data" / r["path"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(data / r["path"], here / "data" / r["path"])
print(f"{len(rows)} test scans copied to {here}/data")
EOF
  du -sh .whl "$HERE"
  echo "There: bash scripts/gpu_strong_attack.sh run   (carry: .whl $HERE, and .cache/attacks to resume)"
  ;;
run)
  if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD" PATH="/tmp/site/bin:$PATH"
  fi
  OUT_DIR=${OUT:-reports}
  mkdir -p "$OUT_DIR/attacks"
  [ -d .cache/attacks ] && cp -r .cache/attacks/. "$OUT_DIR/attacks/"
  # every scan of the subset: the limit equals its size, so the runs attack exactly the prepared scans
  PY=$PY DATA="$HERE/data" SPLIT_CSV="$HERE/split.csv" STRONG_LIMIT="$STRONG_LIMIT" DEVICE="${DEVICE:-cuda}" \
    STRONG_BATCH="${STRONG_BATCH:-16}" ATTACK_CACHE="$OUT_DIR/attacks" \
    ONLY="${ONLY:-adaptive-strong adaptive-known-seed}" REPORT=0 bash scripts/make_report.sh "$OUT_DIR"
  ;;
*)
  echo "usage: bash scripts/gpu_strong_attack.sh prepare|run" >&2
  exit 2
  ;;
esac
