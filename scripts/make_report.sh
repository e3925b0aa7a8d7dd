#!/usr/bin/env bash
# Regenerate the evaluation report: every evaluation run, then REPORT.md + figures.
#
#   scripts/make_report.sh [OUT_DIR]            (default OUT_DIR: reports)
#
# Runs `python -m medfedpure evaluate` into OUT_DIR/runs/<name>/ (results.json + RESULTS.md each), then
# `python -m medfedpure.report`, which writes OUT_DIR/REPORT.md and the PNGs. Settings (environment variables):
#   MODEL            checkpoint folder or Hub repo id (default: the bundled pretrained/)
#   DATA             Br35H folder (default: ../shared/data/br35h)
#   REPEATS          purifier seeds per defended figure (default 2)
#   LIMIT            subset of the test split for the main runs (default: the whole test split)
#   ABLATION_LIMIT   subset for the two ablation runs, which purify every scan (default 200)
# The defaults are sized for a 2-core CPU (about 80 minutes); the README's figures come from them.
#   PAPER_PAIRS      (scan, hospital) pairs of the paper-protocol run: round-robin (default: each test scan with
#                    one hospital's model, in a seeded rotation) or all (every scan with every hospital: 10x)
#   PAIRS            pairs of the other runs (default round-robin: each test scan with one hospital's model)
#   SWEEP_LIMIT      scans in the eps sweep (default 100); SWEEP_EPS (default 0.002,0.004,0.008,0.015,8/255,16/255)
#   ADAPTIVE_LIMIT   scans attacked adaptively at the paper's budget and at 8/255 (default 32)
#   ADAPTIVE_SWEEP_LIMIT, ADAPTIVE_SWEEP_EPS, ADAPTIVE_SWEEP_EOT  adaptive eps sweep (default 16 scans;
#                    0.004,0.008,8/255; 2 noise draws per step; the paper's budget comes from the adaptive run)
#   EOT              purifier noise draws per adaptive step (default 2); CW_STEPS (default 30)
#   FEDAVG           FedAvg baseline classifier (default pretrained/baselines/fedavg; skipped when absent)
#   ROUND_PLOT       accuracy-per-round plot to copy (default pretrained/classifier/accuracy_per_round.png)
#   DEVICE, THREADS  passed to evaluate (--device, --threads)
#   ONLY             space-separated run names to run (default: all but the strong runs); the runs not named
#                    keep the folders they had, and the report reads every run folder there is
#   STRONG_LIMIT     scans of the strong adaptive runs (default 200). They run only when ONLY names them:
#                    adaptive-strong (100 steps, EOT 10, margin loss, 2 restarts, at 0.015 and 8/255) and
#                    adaptive-known-seed (the same attacker knowing the purifier's noise: no EOT needed), and
#                    adaptive-known-seed-N (that attacker on STRONG_SUBSET scans at 0.015, default 16: a
#                    documented subset, e.g. adaptive-known-seed-16 or, with STRONG_SUBSET=32, -32). Hours
#                    on a CPU: each keeps its adversarial batches under .cache/attacks/<name>, so rerunning the
#                    same command after a stop continues where it stopped (ATTACK_CACHE sets that folder).
#                    STRONG_BATCH: scans attacked together (default 2, so a stop loses little).
#   SPLIT_CSV        split CSV (default: split.csv beside the model)
#   REPORT=0         only the runs, no REPORT.md (e.g. the strong runs alone on another machine)
#   QUICK=1          plumbing check only: 2 attack steps, 5 CW steps, 1 EOT draw (numbers meaningless)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-reports}
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
DATA=${DATA:-../shared/data/br35h}
REPEATS=${REPEATS:-2}
PAPER_PAIRS=${PAPER_PAIRS:-round-robin}
PAIRS=${PAIRS:-round-robin}
SWEEP_LIMIT=${SWEEP_LIMIT:-100}
SWEEP_EPS=${SWEEP_EPS:-0.002,0.004,0.008,0.015,8/255,16/255}
ADAPTIVE_LIMIT=${ADAPTIVE_LIMIT:-32}
ADAPTIVE_SWEEP_LIMIT=${ADAPTIVE_SWEEP_LIMIT:-16}
ADAPTIVE_SWEEP_EPS=${ADAPTIVE_SWEEP_EPS:-0.004,0.008,8/255}
ADAPTIVE_SWEEP_EOT=${ADAPTIVE_SWEEP_EOT:-2}
EOT=${EOT:-2}
CW_STEPS=${CW_STEPS:-30}
FEDAVG=${FEDAVG:-pretrained/baselines/fedavg}
STRONG_LIMIT=${STRONG_LIMIT:-200}
ATTACK_CACHE=${ATTACK_CACHE:-.cache/attacks}
ROUND_PLOT=${ROUND_PLOT:-pretrained/classifier/accuracy_per_round.png}

PAPER_STEPS=7; STEPS_8=10; SWEEP_STEPS=10
if [ "${QUICK:-0}" = 1 ]; then
  PAPER_STEPS=2; STEPS_8=2; SWEEP_STEPS=2; CW_STEPS=5; EOT=1; ADAPTIVE_SWEEP_EOT=1
fi

common=(--data "$DATA" --repeats "$REPEATS" --seed 0)
[ -n "${MODEL:-}" ] && common+=(--model "$MODEL")
[ -n "${DEVICE:-}" ] && common+=(--device "$DEVICE")
[ -n "${THREADS:-}" ] && common+=(--threads "$THREADS")
[ -n "${SPLIT_CSV:-}" ] && common+=(--split-csv "$SPLIT_CSV")
limit=(); [ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
ABLATION_LIMIT=${ABLATION_LIMIT:-200}
ablation_limit=(--limit "$ABLATION_LIMIT")

start=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
mkdir -p "$OUT/runs"
STRONG_SUBSET=${STRONG_SUBSET:-16}
STRONG_RUNS="adaptive-strong adaptive-known-seed adaptive-known-seed-$STRONG_SUBSET"
selected() {  # selected NAME: run NAME? (ONLY names it; without ONLY, every run but the strong ones)
  if [ -n "${ONLY:-}" ]; then [[ " $ONLY " == *" $1 "* ]]; else [[ " $STRONG_RUNS " != *" $1 "* ]]; fi
}
for name in paper ablations pgd-8-255 attacks sweep adaptive adaptive-sweep adaptive-bpda transfer fedavg \
            $STRONG_RUNS; do
  if selected "$name"; then rm -rf "${OUT:?}/runs/$name"; fi  # no stale copy of a run that is regenerated
done

evaluate() {  # evaluate NAME ARGS...
  local name=$1; shift
  if ! selected "$name"; then
    echo "== $name: skipped (not selected)" >&2
    return 0
  fi
  echo "== $name: evaluate $*" >&2
  local t0; t0=$(date +%s)
  "$PY" -m medfedpure evaluate "${common[@]}" --out "$OUT/runs/$name" "$@"
  echo "== $name done in $(( $(date +%s) - t0 )) s" >&2
}

# 1. The paper's protocol (Table 2): PGD L-inf eps=0.015, step 0.003, 7 steps, on each hospital's classifier.
evaluate paper --attack pgd --eps 0.015 --step 0.003 --steps "$PAPER_STEPS" --pairs "$PAPER_PAIRS" "${limit[@]}"
# 1b. Ablations at the paper's budget (purify every scan, fixed t* = t_max, detect-and-reject).
evaluate ablations --attack pgd --eps 0.015 --step 0.003 --steps "$PAPER_STEPS" --pairs "$PAIRS" --ablations \
  "${ablation_limit[@]}"
# 2. The common budget eps=8/255 (step 2/255, 10 steps), with the ablations (purify all, fixed t*, reject).
evaluate pgd-8-255 --attack pgd --eps 8/255 --step 2/255 --steps "$STEPS_8" --pairs "$PAIRS" --ablations \
  "${ablation_limit[@]}"
# 3. Other attacks on the classifier: FGSM, PGD-L2 (eps 1.0), Carlini-Wagner L2.
evaluate attacks --attack fgsm,pgdl2,cw --eps 0.015 --steps "$STEPS_8" --cw-steps "$CW_STEPS" --pairs "$PAIRS" \
  "${limit[@]}"
# 4. Robust accuracy vs eps (PGD on the classifier, step eps/4).
evaluate sweep --attack pgd --eps "$SWEEP_EPS" --step eps/4 --steps "$SWEEP_STEPS" --pairs "$PAIRS" \
  --limit "$SWEEP_LIMIT"
# 5. Adaptive attacks through the whole defence (EOT, gradients through the purifier, detector evasion).
evaluate adaptive --attack adaptive --eps 0.015 --step 0.003 --steps "$PAPER_STEPS" --eot "$EOT" --pairs "$PAIRS" \
  --limit "$ADAPTIVE_LIMIT" --ablations
evaluate adaptive-sweep --attack adaptive --eps "$ADAPTIVE_SWEEP_EPS" --step eps/4 --steps "$SWEEP_STEPS" \
  --eot "$ADAPTIVE_SWEEP_EOT" --pairs "$PAIRS" --limit "$ADAPTIVE_SWEEP_LIMIT"
evaluate adaptive-bpda --attack adaptive --gradient bpda --eps 8/255 --step 2/255 --steps "$STEPS_8" --eot "$EOT" \
  --pairs "$PAIRS" --limit "$ADAPTIVE_LIMIT"
# 6. Transfer (black-box) from the FedAvg baseline, and the FedAvg classifier inside the same defence.
if [ -f "$FEDAVG/config.json" ]; then
  evaluate transfer --attack pgd --eps 0.015 --step 0.003 --steps "$PAPER_STEPS" --transfer-from "$FEDAVG" \
    --pairs "$PAIRS" "${limit[@]}"
  evaluate fedavg --attack pgd --eps 0.015 --step 0.003 --steps "$PAPER_STEPS" --classifier "$FEDAVG" \
    --pairs "$PAIRS" "${limit[@]}"
else
  echo "== no FedAvg baseline at $FEDAVG: transfer and FedAvg runs skipped" >&2
fi

# 6b. The strong adaptive attack (only when ONLY names it): resumable through its attack cache.
STRONG_STEPS=100; STRONG_EOT=10
[ "${QUICK:-0}" = 1 ] && STRONG_STEPS=2 && STRONG_EOT=1
strong=(--attack adaptive --eps 0.015,8/255 --step eps/10 --steps "$STRONG_STEPS" --loss margin --restarts 2
        --pairs "$PAIRS" --limit "$STRONG_LIMIT" --adaptive-batch-size "${STRONG_BATCH:-2}")
evaluate adaptive-strong "${strong[@]}" --eot "$STRONG_EOT" --attack-cache "$ATTACK_CACHE/adaptive-strong"
evaluate adaptive-known-seed "${strong[@]}" --eot 1 --known-seed --repeats 1 \
  --attack-cache "$ATTACK_CACHE/adaptive-known-seed"
# Its documented subset (about 2 min per scan on the 2-core CPU): STRONG_SUBSET scans, the paper's budget only.
evaluate "adaptive-known-seed-$STRONG_SUBSET" --attack adaptive --eps 0.015 --step eps/10 --steps "$STRONG_STEPS" \
  --loss margin --restarts 2 --eot 1 --known-seed --repeats 1 --limit "$STRONG_SUBSET" --pairs "$PAIRS" \
  --adaptive-batch-size 2 --attack-cache "$ATTACK_CACHE/adaptive-known-seed-$STRONG_SUBSET"

# 7. Personalised vs FedAvg (vs local-only) on the hospitals' own held-out scans and the test split, from the
#    training records shipped beside the checkpoints.
if [ -z "${ONLY:-}" ]; then
  "$PY" scripts/baselines_table.py --runs pretrained --out "$OUT/baselines.md" >/dev/null
fi

wall=$(( $(date +%s) - start ))
if [ "${REPORT:-1}" = 0 ]; then
  echo "runs written to $OUT/runs in $wall s (no report: REPORT=0)" >&2
  exit 0
fi
load_end=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
"$PY" -m medfedpure.report --runs "$OUT/runs" --out "$OUT" --round-plot "$ROUND_PLOT" --wall-time "$wall" \
  --machine-note "load average $load_start at the start, $load_end at the end${ONLY:+; this call made only: $ONLY}" \
  $([ "$OUT" = reports ] && echo --readme README.md)
echo "report written to $OUT/REPORT.md in $wall s" >&2
