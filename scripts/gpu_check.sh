#!/usr/bin/env bash
# GPU smoke check: every CUDA path once, in about 3 minutes. Run it on a new machine before a long run:
#
#     bash scripts/gpu_check.sh [omniglot data_dir]     # default ../shared/data/omniglot
#
# CI has no GPU, so this script is the only thing that exercises the CUDA code: the synthetic default,
# the levers (decay_modules, label_swap) solo and in a group, the paper cell (12 layers + ResNet, 105x105) in each compile mode, SIGTERM + resume, eval.py,
# sample_attention.py, bench.py --quick, a grid of two cells, and the same two cells as one member-batched group.
# It stops at the first failure and prints the step rates it saw; outputs go to $OUT (default /tmp/gpu_check).
#
# What CI already guards on a CPU (tests/test_cuda_on_cpu.py, fast tier): device mix-ups (a tensor made without
# device= in the data, sampler, model, step, group stacking or eval) under fake CUDA tensors, solo and as a group, on
# the synthetic and the Omniglot ResNet path; graph breaks in the compiled training forward (torch._dynamo.explain);
# bf16 dtype mismatches through the step under CPU autocast. What only this script checks: CUDA graphs
# (compile_mode=reduce-overhead), the real CUDA kernels and backward, CUDA autocast, the CUDA generator and the
# torch.cuda.* calls (is_available, rng state, device name), and throughput. An Omniglot (ResNet) group's real CUDA
# step (BatchNorm forward and backward under vmap) runs in neither yet.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/omniglot}
OUT=${OUT:-/tmp/gpu_check}
rm -rf "$OUT"; mkdir -p "$OUT"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: CUDA is not available')"
python -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
step() { echo; echo "=== $1 ($(date +%T))"; }
rate() { grep -o '[0-9.]* steps/s' "$1" | tail -1 || true; }

step "synthetic default, 300 steps"
python train.py --out_dir="$OUT/synthetic" --max_iters=300 --eval_interval=150 --log_interval=100 > "$OUT/synthetic.log" 2>&1
echo "synthetic: $(rate "$OUT/synthetic.log")"

step "levers: decay on mlp+head with label swap, 200 steps; a group whose members differ in levers (p_copy too)"
LEVERS=(--max_iters=200 --eval_interval=100 --log_interval=100 --n_eval_episodes=128)
python train.py "${LEVERS[@]}" --weight_decay=1 --decay_modules=mlp,head --label_swap=0.3 \
  --out_dir="$OUT/levers" > "$OUT/levers.log" 2>&1
python train.py "${LEVERS[@]}" --decay_modules=mlp --weight_decay=1 --out_dir="$OUT/levers_g0" :: \
  "${LEVERS[@]}" --label_swap=0.5 --l2=0.01 --decay_modules=head --p_copy=0.5 --out_dir="$OUT/levers_g1" > "$OUT/levers_group.log" 2>&1
echo "levers: $(rate "$OUT/levers.log"); group: $(grep -o '[0-9.]* cell-steps/s' "$OUT/levers_group.log" | tail -1)"

PAPER=(config/omniglot.py config/many.py --data_dir="$DATA" --max_iters=300 --eval_interval=150 --log_interval=100
       --n_eval_episodes=256 --warmup_iters=100)
for mode in default reduce-overhead; do
  step "paper cell, compile_mode=$mode, 300 steps"
  python train.py "${PAPER[@]}" --compile_mode=$mode --out_dir="$OUT/paper_$mode" > "$OUT/paper_$mode.log" 2>&1
  echo "paper $mode: $(rate "$OUT/paper_$mode.log")"
done

step "Omniglot group of 2 (stacked ResNet under vmap) with forgetting, 100 steps; member 0 against its solo run"
OG=(config/omniglot.py config/omniglot_small.py --data_dir="$DATA" --max_iters=100 --eval_interval=50 --log_interval=50
    --n_eval_episodes=128 --forget_every=40)
python train.py "${OG[@]}" --out_dir="$OUT/og_g0" :: "${OG[@]}" --seed=1 --weight_decay=0.3 --out_dir="$OUT/og_g1" \
  > "$OUT/og_group.log" 2>&1
python train.py "${OG[@]}" --out_dir="$OUT/og_solo" > "$OUT/og_solo.log" 2>&1
python - "$OUT" <<'EOF2'
import json, sys
rows = [[json.loads(l) for l in open(f'{sys.argv[1]}/{d}/metrics.jsonl')] for d in ('og_g0', 'og_solo')]
print('omniglot group member 0 vs solo, icl/iwl per eval:', [(round(a['icl_acc'], 3), round(b['icl_acc'], 3),
      round(a['iwl_acc'], 3), round(b['iwl_acc'], 3)) for a, b in zip(*rows)])
EOF2

step "SIGTERM + resume (paper cell)"
python train.py "${PAPER[@]}" --max_iters=100000 --eval_interval=100000 --out_dir="$OUT/sigterm" > "$OUT/sigterm.log" 2>&1 &
pid=$!
for _ in $(seq 120); do grep -q "iter 100:" "$OUT/sigterm.log" 2>/dev/null && break; sleep 1; done
kill -TERM $pid; wait $pid
grep -q "SIGTERM: checkpointed" "$OUT/sigterm.log"
stopped=$(grep -o 'checkpointed at iter [0-9]*' "$OUT/sigterm.log" | grep -o '[0-9]*$')
python train.py "${PAPER[@]}" --max_iters=$((stopped + 50)) --eval_interval=100000 --out_dir="$OUT/sigterm" \
  --init_from=resume > "$OUT/resume.log" 2>&1
grep -q "resumed from iter $stopped" "$OUT/resume.log"
echo "resume: stopped at $stopped, resumed to $((stopped + 50))"

step "eval.py and sample_attention.py on CUDA"
python eval.py --out_dir="$OUT/paper_default" --device=cuda | tail -1
python sample_attention.py --out_dir="$OUT/paper_default" --device=cuda --dtype=bfloat16 --n_icl=2 --n_bursty=1 \
  --track='' > "$OUT/attention.log" 2>&1
ls "$OUT/paper_default/attention" | head -3

step "bench.py --quick"
python bench.py --quick --cells=default,paper --json_out="$OUT/bench.json" > "$OUT/bench.log" 2>&1
tail -25 "$OUT/bench.log" | head -24

step "grid.py: two synthetic cells, then the same two as one member-batched group"
GRID=(--classes=few,many --weight_decays=0 --seeds=0 --jobs=1
      "--synthetic_args=--max_iters=200 --eval_interval=100 --n_eval_episodes=128 --log_interval=100")
python grid.py --grid_dir="$OUT/grid" "${GRID[@]}" > "$OUT/grid.log" 2>&1
python grid.py --grid_dir="$OUT/grid_group" --group_size=2 "${GRID[@]}" > "$OUT/grid_group.log" 2>&1
grep -h "VERDICT\|No verdict\|finished" "$OUT/grid.log" "$OUT/grid_group.log" | head -6
python - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
for cell in ('few_wd0_s0', 'many_wd0_s0'):
    solo = [json.loads(l) for l in open(f'{out}/grid/{cell}/metrics.jsonl')]
    group = [json.loads(l) for l in open(f'{out}/grid_group/{cell}/metrics.jsonl')]
    diff = max(abs(a['icl_acc'] - b['icl_acc']) for a, b in zip(solo, group))
    print(f"{cell}: solo vs group max |icl difference| {diff:.4f} over {len(solo)} evals (bf16 autocast)")
EOF
echo; echo "gpu_check: all CUDA paths ran ($(date +%T)); outputs in $OUT"
