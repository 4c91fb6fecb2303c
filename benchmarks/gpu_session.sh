#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool), about 9 minutes, for issue 13:
#  1. the CUDA path as a user meets it: ./scripts/test (the `device` fixture repeats tests on CUDA),
#     ./scripts/demo (auto-detects CUDA), torchrun with nccl and bf16 autocast;
#  2. resnet20 on CIFAR-10: a recipe ablation (label smoothing, weight decay, lr, validation hold-out,
#     epochs) and the JPEG ablation (the data re-encoded at quality 75, 95 and 50), all side by side
#     on the one GPU, plus a longer base run.
# Run from the repo root with $OUT set and .whl/ (torch-pruning and tensorly wheels) and
# .gpu/cifar10-jpeg.tar.gz carried:   bash benchmarks/gpu_session.sh
#  3. (part "oracle", issue 12) auto against the oracle on the interim resnet20 and vgg16@0.5 (.gpu/*.pt
#     carried too): the cr grid with a 5-epoch final fine-tune, then `auto` with the thesis's bisection and
#     the progressive search, with and without --distill, one seed (ORACLE_SEEDS).
#  4. (part "thesis", issue 13) tables 3-3, 3-4 and 4-1 on vgg16@0.5 with 5-epoch fine-tunes, 2 seeds
#     (about 200 epochs: resumable from its cache, results/pruning/ablations_recovery.json, over calls).
#  5. (part "rows") independent result rows side by side, one process each in its own copy of
#     benchmarks/ (MPS on when the machine has it): by default table 8's distilling oracle grids (seeds
#     0-1: the grid fine-tuned as the distilling searches' final model is), the calibrated search
#     (--distill, 0.2-epoch probes) for seed 2 and with 0.83-epoch verifications, verified --distill and
#     the plain oracle grids for seed 2, and a 200-epoch resnet20 base for issue 13 (resumable: its state comes back
#     under rows/runs; keep it in .gpu/runs/, carried, and the next call continues it. vgg16@0.5's state,
#     about 30 MB with the optimizer's, is over what one file from $OUT may weigh, 16 MiB);
#     ROWS="name|script args"
#     lines pick others. Unpack $OUT/rows.tar.gz here and run
#     `python benchmarks/merge_rows.py <dir>/rows` to fold them into results/.
# PARTS picks what runs (default "cuda ablation"; "cuda rows" for the next session's rows).
# Leaves $OUT/summary.txt and $OUT/res.tar.gz (logs, each run's JSON, the base run's model or state).
# Every training run uses --resume, so one stopped at the deadline can be continued elsewhere.
set -u
START=$(date +%s)
END=${END:-550}                 # seconds after START when whatever still runs is stopped and packed
# END must leave the packing (about 10 s) inside both the call's timeout and the session's device budget: the
# budget also pays for the start and the transfers (2026-11-27: a second call given END=430 with 546 s of
# budget left was cut at 429 s, before it packed, and its two trainings were lost).
EPOCHS=${EPOCHS:-30}            # each ablation arm
BASE_EPOCHS=${BASE_EPOCHS:-100}
DEVICE=${DEVICE:-cuda}
PARTS=${PARTS:-cuda ablation}   # cuda: tests, demo, torchrun; ablation: table 0's trainings; oracle: table 8's rows; thesis: table 3a; rows: ROWS side by side
CUDA_PATH=0; case " $PARTS " in *" cuda "*) CUDA_PATH=1;; esac
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
# DATA_TAR: the image tree as .tar.gz (a dry run: a few images per class)
# EXTRA: more train arguments for every run (a dry run: EXTRA="--max-steps 3")
R=/tmp/res
DATA_TAR=$(realpath "${DATA_TAR:-.gpu/cifar10-jpeg.tar.gz}")
rm -rf "$R" /tmp/runs /tmp/data
mkdir -p "$R" /tmp/runs /tmp/data/orig
left() { local s=$(( END - ($(date +%s) - START) )); echo $(( s > 1 ? s : 1 )); }
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$R/timeline.txt"; }

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 CONVSLIM_CACHE=/tmp/cache
PY=$(command -v python3)
if [ "$CUDA_PATH" = 1 ]; then
  # the scripts' own .venv, made of the machine's python (nothing can be installed there)
  mkdir -p .venv/bin
  printf '#!/bin/sh\nexec %s "$@"\n' "$PY" > .venv/bin/python
  printf '#!/bin/sh\nexec %s -m convslim "$@"\n' "$PY" > .venv/bin/convslim
  chmod +x .venv/bin/python .venv/bin/convslim
  sha256sum pyproject.toml | cut -d' ' -f1 > .venv/.convslim-installed
fi
{ nvidia-smi; nproc; $PY -c "import torch, onnxruntime, torch_pruning
print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(),
      'ort', onnxruntime.__version__, 'tp', torch_pruning.__version__)"; } > "$R/env.txt" 2>&1
log "environment: $(tail -1 "$R/env.txt")"
if [ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control > /dev/null; then   # many small processes share the GPU
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog; mkdir -p /tmp/mps /tmp/mpslog
  if nvidia-cuda-mps-control -d && timeout 60 "$PY" -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    log "MPS on"
  else
    echo quit | nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; log "MPS off"
  fi
fi
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 > "$R/gpu.csv" 2>/dev/null &
SMI=$!

if [ "$CUDA_PATH" = 1 ]; then
  ( timeout "$(left)" ./scripts/test -rf -vv -p no:cacheprovider > "$R/tests.log" 2>&1; echo "rc=$?" >> "$R/tests.log"
    log "tests done: $(tail -2 "$R/tests.log" | tr '\n' ' ')" ) &
  ( OUT=/tmp/demo timeout "$(left)" ./scripts/demo > "$R/demo.log" 2>&1; echo "rc=$?" >> "$R/demo.log"
    mkdir -p "$R/demo"; cp /tmp/demo/*.json "$R/demo/" 2>/dev/null; log "demo done: $(tail -1 "$R/demo.log")" ) &
  ( timeout "$(left)" "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m convslim train \
      --model digits_resnet --data digits --epochs 3 --device cuda --amp --quiet --out /tmp/ddp.pt \
      --json "$R/ddp.json" > "$R/ddp.log" 2>&1; echo "rc=$?" >> "$R/ddp.log"; log "torchrun done: $(tail -1 "$R/ddp.log")" ) &
fi

if has oracle; then   # 0.5-epoch probes, as the CPU's 5-epoch rows: what they cached is not run again
  ( for M in ${ORACLE_MODELS:-.gpu/resnet20-cifar10-70ep.pt .gpu/vgg16w05-cifar10-45ep.pt}; do
      for D in "" --distill; do
        CONVSLIM_CIFAR="$DATA_TAR" timeout "$(left)" "$PY" benchmarks/auto_oracle.py --model "$M" --device "$DEVICE" \
          --seeds "${ORACLE_SEEDS:-0}" --final-epochs "${ORACLE_FINAL:-5}" --probe-epochs 0.5 --batch-size 128 \
          --searches progressive$([ -z "$D" ] && echo ,thesis) $D >> "$R/oracle.log" 2>&1; echo "rc=$?" >> "$R/oracle.log"
      done
    done
    mkdir -p "$R/oracle"; cp benchmarks/results/auto_oracle/*.json "$R/oracle/"; log "oracle done: $(tail -1 "$R/oracle.log")" ) &
fi
if has thesis; then   # issue 13's tables 3-3, 3-4, 4-1 at a real recovery (.gpu/vgg16w05-cifar10-45ep.pt carried)
  ( cd benchmarks && CONVSLIM_CIFAR="$DATA_TAR" timeout "$(left)" "$PY" pruning_tables.py ablations \
      --model "../${THESIS_MODEL:-.gpu/vgg16w05-cifar10-45ep.pt}" --device "$DEVICE" --seeds "${THESIS_SEEDS:-0,1}" \
      --ft-epochs 5 --cache ablations_recovery > "$R/thesis.log" 2>&1; echo "rc=$?" >> "$R/thesis.log"
    cp results/pruning/ablations_recovery.json "$R/" 2>/dev/null; log "thesis tables done: $(tail -1 "$R/thesis.log")" ) &
fi
if has rows; then   # result rows side by side, each in its own copy of benchmarks/ (one writer per cache file);
  # $OUT/rows.tar.gz brings back each copy's results/ and the searches' step logs, merged here by merge_rows.py
  CONVSLIM_CIFAR="$DATA_TAR" "$PY" -c "from convslim.data import load_data; import os
load_data('cifar10:' + os.environ['CONVSLIM_CIFAR'], val_fraction=0.1, seed=0)" > "$R/prep.log" 2>&1
  log "cifar cached"
  V=$PWD/.gpu/vgg16w05-cifar10-45ep.pt; N=$PWD/.gpu/resnet20-cifar10-70ep.pt
  O="auto_oracle.py --device $DEVICE --final-epochs 5 --probe-epochs 0.5 --batch-size 128"
  T="pruning_tables.py ablations --model $V --device $DEVICE --ft-epochs 5 --cache ablations_recovery --tables 3-3,3-4"
  mkdir -p /tmp/rows/runs; cp -n .gpu/runs/* /tmp/rows/runs/ 2>/dev/null   # trainings carried from an earlier call resume
  while IFS='|' read -r name args; do
    [ -z "$name" ] && continue
    mkdir -p /tmp/rows/runs; [ -d "/tmp/rows/$name" ] || cp -r benchmarks "/tmp/rows/$name"   # a second call resumes
    ( cd "/tmp/rows/$name" && CONVSLIM_CIFAR="$DATA_TAR" timeout "$(left)" "$PY" $args > "$R/row-$name.log" 2>&1
      echo "rc=$?" >> "$R/row-$name.log"; log "row $name done: $(tail -1 "$R/row-$name.log")" ) &
  done <<ROWS
${ROWS:-v-kdo|$O --model $V --seeds 0,1 --min-cr 0.7 --searches= --distill
r-kdo|$O --model $N --seeds 0,1 --min-cr 0.8 --searches= --distill
v-calkd2|$O --model $V --seeds 2 --min-cr 1 --searches calibrated --distill --probe-epochs 0.2
r-calkd2|$O --model $N --seeds 2 --min-cr 1 --searches calibrated --distill --probe-epochs 0.2
v-calv6|$O --model $V --seeds 0,1,2 --min-cr 1 --searches calibrated --distill --probe-epochs 0.2 --verify-epochs 0.8333
r-calv6|$O --model $N --seeds 0,1,2 --min-cr 1 --searches calibrated --distill --probe-epochs 0.2 --verify-epochs 0.8333
v-kd2|$O --model $V --seeds 2 --min-cr 1 --searches verified --distill
r-kd2|$O --model $N --seeds 2 --min-cr 1 --searches verified --distill
v-grid2a|$O --model $V --seeds 2 --min-cr 0.85 --searches=
v-grid2b|$O --model $V --seeds 2 --min-cr 0.7 --max-cr 0.8 --searches=
r-grid2|$O --model $N --seeds 2 --min-cr 0.85 --searches=
r20-200|-m convslim train --model resnet20 --data cifar10:$DATA_TAR --epochs 200 --schedule cosine --lr 0.1 --label-smoothing 0.1 --seed 0 --quiet --device $DEVICE --resume --out /tmp/rows/runs/r20-200.pt --json /tmp/rows/runs/r20-200.json}
ROWS
fi
has ablation || { while [ "$(jobs -rp | grep -vx "$SMI" | wc -l)" -gt 0 ] && [ "$(left)" -gt 1 ]; do sleep 5; done; }
has ablation && tar -xzf "$DATA_TAR" -C /tmp/data/orig
has ablation && log "extracted"
prep() {   # decode a source once into the cache, so the runs that share it do not each decode it
  "$PY" -c "from convslim.data import load_data; load_data('cifar10:/tmp/data/$1', val_fraction=0.1, seed=0)" \
    >> "$R/prep.log" 2>&1
}
arm() {    # NAME SOURCE ARGS...: one resnet20 training run in the background
  local name=$1 src=$2; shift 2
  OMP_NUM_THREADS=2 timeout "$(left)" "$PY" -m convslim train --model resnet20 --data "cifar10:/tmp/data/$src" \
    --schedule cosine --seed 0 --quiet --device "$DEVICE" --resume --out "/tmp/runs/$name.pt" \
    --json "$R/$name.json" "$@" ${EXTRA:-} > "$R/$name.log" 2>&1 &
}
has ablation && ( prep orig; log "orig cached"
  arm base${BASE_EPOCHS} orig --epochs "$BASE_EPOCHS" --lr 0.1 --label-smoothing 0.1
  arm ref orig --epochs "$EPOCHS" --lr 0.1 --label-smoothing 0.1
  arm ls0 orig --epochs "$EPOCHS" --lr 0.1
  arm wd1e-4 orig --epochs "$EPOCHS" --lr 0.1 --label-smoothing 0.1 --weight-decay 1e-4
  arm lr0.05 orig --epochs "$EPOCHS" --lr 0.05 --label-smoothing 0.1
  arm noval orig --epochs "$EPOCHS" --lr 0.1 --label-smoothing 0.1 --val-fraction 0
  wait ) &
has ablation && for q in 75 95 50; do
  ( "$PY" benchmarks/jpeg_reencode.py /tmp/data/orig "/tmp/data/q$q" --quality "$q" --workers 3 >> "$R/prep.log" 2>&1
    prep "q$q"; log "q$q cached"
    arm "jpeg$q" "q$q" --epochs "$EPOCHS" --lr 0.1 --label-smoothing 0.1
    wait ) &
done

while [ "$(jobs -rp | grep -vx "$SMI" | wc -l)" -gt 0 ] && [ "$(left)" -gt 1 ]; do sleep 5; done
log "stopping"
pkill -f "convslim train" ; pkill -f "scripts/demo"; pkill -f pytest; pkill -f auto_oracle; pkill -f pruning_tables; sleep 3

"$PY" - "$R" > "$R/summary.txt" 2>&1 <<'EOF'
import glob, json, os, sys, torch
R = sys.argv[1]
print(f"{'run':10} {'epochs':>9} {'val':>6} {'test':>6} {'s/epoch':>8}")
for state in sorted(glob.glob("/tmp/runs/*.pt.state.pt")):
    name = os.path.basename(state)[:-len(".pt.state.pt")]
    js = os.path.join(R, name + ".json")
    if os.path.exists(js):
        log = json.load(open(js)); hist = log["epochs"]; test = log.get("test", {}).get("top1")
        total = log["config"]["epochs"]
    else:
        st = torch.load(state, weights_only=False); hist = st["history"]; test = None
        total = st["config"]["epochs"]
    last = hist[-1] if hist else {}
    sec = sum(h["seconds"] for h in hist) / max(len(hist), 1)
    val = last.get("val_acc")
    print(f"{name:10} {len(hist):>4}/{int(total):<4} {val if val is None else round(val, 2)!s:>6} "
          f"{test if test is None else round(test, 2)!s:>6} {sec:8.1f}")
EOF
for f in /tmp/runs/base*.pt /tmp/runs/base*.state.pt; do [ -e "$f" ] && cp "$f" "$R/"; done
if [ -e "$R/base${BASE_EPOCHS}.pt" ]; then rm -f "$R/base${BASE_EPOCHS}.pt.state.pt"; fi
cat "$R/summary.txt"; cat "$R/timeline.txt"
cp "$R/summary.txt" "$R/timeline.txt" "$OUT/" 2>/dev/null
tail -n 30 "$R/tests.log" > "$OUT/tests_tail.txt" 2>/dev/null
tar -czf "$OUT/res.tar.gz" -C /tmp res
has rows && (cd /tmp && { find rows/runs -type f -size -5M; ls rows/runs/*.state.pt; ls rows/*/results/auto_oracle/*.json rows/*/results/pruning/ablations_recovery.json; } \
  > /tmp/rows.list 2>/dev/null; tar -czf "$OUT/rows.tar.gz" -T /tmp/rows.list)   # step logs and small candidates: a search resumes
ls -la "$OUT"
