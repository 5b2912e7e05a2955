#!/usr/bin/env bash
# One prepared call on a lent GPU machine: run the CUDA paths for real and write logs and
# tables under $OUT. The machine reaches no registry, so what it lacks is carried in
# .whl/ (see README "GPU checks" for how to build it):
#   .whl/*.whl     deepspeed (built with DS_BUILD_OPS=0), liger-kernel, transformers,
#                  slurm-python-utils (+ methodtools, wirerope), datasets (+ dill,
#                  multiprocess; the image has pyarrow) and the small pure-Python
#                  deps the image lacks
#   .whl/tok/      a tokenizer directory (SmolLM2's)
#   .whl/data/     train.jsonl + rationales.jsonl (tools/bench_train.py synthetic_rte)
# Sections: environment and bf16 matmul ceiling; zero3: a 1-process ZeRO-3 bf16 run of a
# random Llama-3.2-1B through the deepspeed launcher (sdpa) and again with dhrd_segments
# attention; flex: the packed-attention paths and ZeRO stages on one GPU (FlexAttention
# with the document mask transformers builds from the packed position ids: only the
# segments' blocks are computed; ZeRO-2, which on one GPU skips ZeRO-3's per-module
# gather/release hooks); train: packed attention through torch's varlen kernel
# (dhrd_segments) under zero3.json and under the built-in config (ZeRO stage "auto": 2 on one
# GPU), against zero3.json + sdpa; qps: the lean classifier at the paper's 3B shape
# (tools/bench_qps.py, 128-token inputs); loss: tools/bench_loss.py on CUDA; tests: the CUDA
# tests; best: the built-in config at two pack shapes; compile: --compile on and off.
# SECTIONS=train,qps,tests fits one 8-minute call at STEPS=8; so does STEPS=12 SECTIONS=compile,qps.
set -u
OUT=${OUT:-/tmp/gpu_out}
WHL=${WHL:-.whl}
STEPS=${STEPS:-8}
SECTIONS=${SECTIONS:-zero3,loss,tests}   # which of the sections below to run
want() { [[ ",$SECTIONS," == *",$1,"* ]]; }
mkdir -p "$OUT"
say() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }

pip install --no-index --no-deps --target /tmp/site "$WHL"/*.whl > "$OUT/pip.log" 2>&1 || say "pip install failed"
export PYTHONPATH=/tmp/site:$PWD
PY=python3

say "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
$PY - <<'PYEOF' 2>&1 | tee -a "$OUT/summary.txt"
import torch, transformers, triton, deepspeed
print("torch", torch.__version__, "transformers", transformers.__version__, "triton", triton.__version__,
      "deepspeed", deepspeed.__version__)
a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(3):
    a @ b
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
times = []
for _ in range(10):
    s.record(); a @ b; e.record(); torch.cuda.synchronize(); times.append(s.elapsed_time(e))
times.sort()
print(f"bf16 8192^3 matmul, random data: {2 * 8192**3 / times[5] / 1e9:.0f} TFLOP/s (median of 10)")
PYEOF

if want zero3 || want flex || want train || want shape || want best || want compile; then
say "random-init llama-3.2-1b"
timeout 90 $PY tools/make_random_model.py --shape llama-3.2-1b --tokenizer "$WHL/tok" --out /tmp/llama1b \
    --device cuda > "$OUT/make_model.log" 2>&1 || say "make_random_model failed: $(tail -1 "$OUT/make_model.log")"

COMMON=(--model /tmp/llama1b --task rte --train_file "$WHL/data/train.jsonl"
        --rationale_file "$WHL/data/rationales.jsonl" --max_steps "$STEPS" --pack_tokens 8192
        --max_seq_len 1024 --micro_batches_per_step 8 --export_final false --progress false
        --warmup_steps 2 --lr 1e-4 --eval_every 0)
DS_CFG=ds_configs/zero3.json
fi
summarise() {  # median over steps >= 3 of the run's metrics.jsonl
    $PY - "$1" "$2" <<'PYEOF' 2>&1 | tee -a "$OUT/summary.txt"
import json, statistics, sys
name, path = sys.argv[1], sys.argv[2]
try:
    rows = [json.loads(l) for l in open(path) if '"train"' in l]
except OSError:
    sys.exit(print(f"{name}: no metrics"))
late = [r for r in rows if r["step"] >= 3] or rows
med = lambda k: statistics.median(r[k] for r in late if k in r) if any(k in r for r in late) else float("nan")
print(f"{name}: {len(rows)} steps, tokens/s {med('perf/real_tokens_per_s'):.0f}, samples/s "
      f"{med('perf/samples_per_s'):.1f}, model TFLOP/s {med('perf/model_tflops_per_device'):.1f}, "
      f"MFU {med('perf/mfu'):.3f}, peak mem {max(r.get('perf/peak_mem_gib', 0) for r in rows):.1f} GiB, "
      f"loss {rows[0].get('train/loss_total', float('nan')):.3f} -> {rows[-1].get('train/loss_total', float('nan')):.3f}")
PYEOF
}

if want zero3; then
say "ZeRO-3 bf16, deepspeed launcher, sdpa, $DS_CFG"
timeout 240 $PY /tmp/site/bin/deepspeed --num_gpus 1 dhrd/train.py --ds_config "$DS_CFG" "${COMMON[@]}" \
    --output_dir /tmp/z3_sdpa --attn_implementation sdpa > "$OUT/z3_sdpa.log" 2>&1
rc=$?
say "rc $rc"
if [ $rc -ne 0 ]; then
    grep -n -i -E "error|exception|failed|Traceback" "$OUT/z3_sdpa.log" | head -20 | tee -a "$OUT/summary.txt"
    $PY -c "import json; c = json.load(open('ds_configs/zero3.json')); c['optimizer']['params']['torch_adam'] = True; json.dump(c, open('/tmp/zero3_torch_adam.json', 'w'))"
    DS_CFG=/tmp/zero3_torch_adam.json
    say "retry with torch AdamW (no fused op to JIT-build)"
    timeout 180 $PY dhrd/train.py --ds_config "$DS_CFG" "${COMMON[@]}" --output_dir /tmp/z3_sdpa_torch_adam \
        --attn_implementation sdpa > "$OUT/z3_sdpa_torch_adam.log" 2>&1
    say "rc $?"
    summarise "zero3 sdpa torch-adam" /tmp/z3_sdpa_torch_adam/metrics.jsonl
fi
summarise "zero3 sdpa" /tmp/z3_sdpa/metrics.jsonl

say "ZeRO-3 bf16, dhrd_segments attention, $DS_CFG"
timeout 180 $PY dhrd/train.py --ds_config "$DS_CFG" "${COMMON[@]}" --output_dir /tmp/z3_segments \
    --attn_implementation dhrd_segments > "$OUT/z3_segments.log" 2>&1
say "rc $?"
summarise "zero3 dhrd_segments" /tmp/z3_segments/metrics.jsonl
for d in /tmp/z3_*; do [ -f "$d/metrics.jsonl" ] && cp "$d/metrics.jsonl" "$OUT/$(basename "$d").metrics.jsonl"; done
fi

if want flex; then
# needs the zero3 section's model (/tmp/llama1b) and COMMON; each run's first steps compile
for run in "zero3 flex_attention ds_configs/zero3.json" "zero2 sdpa ds_configs/zero2.json" \
           "zero2 flex_attention ds_configs/zero2.json"; do
    read -r stage attn cfg <<< "$run"
    say "$stage bf16, $attn, $cfg"
    timeout 150 $PY dhrd/train.py --ds_config "$cfg" "${COMMON[@]}" --output_dir "/tmp/${stage}_$attn" \
        --attn_implementation "$attn" > "$OUT/${stage}_$attn.log" 2>&1
    say "rc $?"
    summarise "$stage $attn" "/tmp/${stage}_$attn/metrics.jsonl"
done
fi

if want train; then
# one process each (python, not the launcher: same engine, less start-up); "builtin" = no --ds_config
for run in "zero3 sdpa ds_configs/zero3.json" "zero3 dhrd_segments ds_configs/zero3.json" \
           "builtin dhrd_segments -"; do
    read -r stage attn cfg <<< "$run"
    say "$stage bf16, $attn, $cfg"
    cfgarg=(); [ "$cfg" != "-" ] && cfgarg=(--ds_config "$cfg")
    timeout 110 $PY dhrd/train.py "${cfgarg[@]}" "${COMMON[@]}" --output_dir "/tmp/t_${stage}_$attn" \
        --attn_implementation "$attn" > "$OUT/t_${stage}_$attn.log" 2>&1
    say "rc $?"
    grep -m3 -E "ZeRO stage|attention|varlen" "$OUT/t_${stage}_$attn.log" | cut -c1-200 >> "$OUT/summary.txt"
    summarise "$stage $attn" "/tmp/t_${stage}_$attn/metrics.jsonl"
    [ -f "/tmp/t_${stage}_$attn/metrics.jsonl" ] && cp "/tmp/t_${stage}_$attn/metrics.jsonl" "$OUT/t_${stage}_$attn.metrics.jsonl"
done
fi

if want shape; then
# ZeRO stage 0 and 1 on one GPU (bf16 weights, fp32 master copy), and fewer, larger packs (same tokens a step)
for st in 0 1; do
    $PY -c "import json, sys; from dhrd.engine.ds_config import DEFAULT_CONFIG as c; c['zero_optimization'] = {'stage': $st}; json.dump(c, open('/tmp/stage$st.json', 'w'))"
done
for run in "stage0 8192 8 /tmp/stage0.json" "stage1 8192 8 /tmp/stage1.json" "builtin 16384 4 -" "builtin 32768 2 -"; do
    read -r stage pack mb cfg <<< "$run"
    say "$stage bf16, dhrd_segments, pack $pack x $mb"
    cfgarg=(); [ "$cfg" != "-" ] && cfgarg=(--ds_config "$cfg")
    timeout 100 $PY dhrd/train.py "${cfgarg[@]}" "${COMMON[@]}" --pack_tokens "$pack" --micro_batches_per_step "$mb" \
        --max_seq_len 1024 --output_dir "/tmp/s_${stage}_$pack" > "$OUT/s_${stage}_$pack.log" 2>&1
    say "rc $?"
    grep -m1 -E "ZeRO" "$OUT/s_${stage}_$pack.log" | cut -c1-200 >> "$OUT/summary.txt"
    grep -m3 -iE "error|Traceback" "$OUT/s_${stage}_$pack.log" | cut -c1-300 >> "$OUT/summary.txt"
    summarise "$stage pack $pack x $mb" "/tmp/s_${stage}_$pack/metrics.jsonl"
done
fi

if want best; then
# the built-in config (ZeRO "auto": 1 on one bf16 GPU) at the default shape and with larger packs
for run in "8192 8" "32768 2"; do
    read -r pack mb <<< "$run"
    say "builtin bf16, auto attention, pack $pack x $mb"
    timeout 100 $PY dhrd/train.py "${COMMON[@]}" --pack_tokens "$pack" --micro_batches_per_step "$mb" \
        --output_dir "/tmp/b_$pack" > "$OUT/b_$pack.log" 2>&1
    say "rc $?"
    grep -m1 -E "ZeRO" "$OUT/b_$pack.log" | cut -c1-250 >> "$OUT/summary.txt"
    summarise "builtin pack $pack x $mb" "/tmp/b_$pack/metrics.jsonl"
done
fi

if want compile; then
# --compile (decoder blocks through torch.compile; attention eager) against the same run without
for run in "8192 8 false" "8192 8 true" "32768 2 true"; do
    read -r pack mb comp <<< "$run"
    say "builtin bf16, auto attention, pack $pack x $mb, --compile $comp"
    timeout 150 $PY dhrd/train.py "${COMMON[@]}" --pack_tokens "$pack" --micro_batches_per_step "$mb" \
        --compile "$comp" --output_dir "/tmp/c_${pack}_$comp" > "$OUT/c_${pack}_$comp.log" 2>&1
    say "rc $?"
    grep -m3 -iE "error|Traceback" "$OUT/c_${pack}_$comp.log" | cut -c1-300 >> "$OUT/summary.txt"
    summarise "builtin pack $pack x $mb compile $comp" "/tmp/c_${pack}_$comp/metrics.jsonl"
done
fi

if want qps; then
for bs in ${QPS_BATCHES:-256}; do
    say "lean classifier QPS, random-init llama-3.2-3b, bf16, 128-token inputs, batch $bs"
    timeout 130 $PY tools/bench_qps.py --model "$WHL/tok" --random_init_config llama-3.2-3b --device cuda \
        --dtype bfloat16 --skip cot,pipeline --n 2048 --batch_size "$bs" --min_words 99 --max_words 99 \
        --repeats 3 --peak_tflops 989 > "$OUT/qps_3b_$bs.md" 2>&1
    say "rc $?"
    tail -4 "$OUT/qps_3b_$bs.md" >> "$OUT/summary.txt"
done
fi

if want loss; then
say "bench_loss (CUDA, bf16)"
timeout 150 $PY tools/bench_loss.py --device cuda --repeat 3 \
    --sizes 16384x576x49152 16384x2048x128256 16384x2048x262144 > "$OUT/bench_loss.md" 2>&1
say "rc $?"
tail -20 "$OUT/bench_loss.md" >> "$OUT/summary.txt"
fi

if want tests; then
say "CUDA tests"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/kernels/test_triton.py tests/test_flops.py \
    tests/test_segment_attention.py > "$OUT/pytest.log" 2>&1
say "rc $?"
tail -5 "$OUT/pytest.log" >> "$OUT/summary.txt"
fi
cat "$OUT/summary.txt"
