#!/bin/bash
# Compression report + default INT8 model for a shipped R9.4.1 FP32 parent, in one go:
# two parallel --build-only processes (structured chain / everything else), then one
# measuring run over all files (same threads, same run) that applies the result to the card.
# usage: tools/scripts/compress_r941.sh CKPT MODEL_DIR OUT_DIR
# env: STEPS_A (per pruning stage, default 2000), STEPS_B (default 600), QAT_STEPS (600),
#      AMOUNT (structured %, default 40), EDGECALL_LITERT_PYTHON (a python with litert-torch)
set -eu
cd "$(dirname "$0")/../.."
CK=$1; M=$2; OUT=$3
DATA=${EDGECALL_SHARED_DATA:-../shared/data}
D=$DATA/r9.4.1
CACHE=${EDGECALL_CACHE:-/work/cache}
A=${AMOUNT:-40}
W=$CACHE/compress/final_$(basename "$M")
mkdir -p "$W" "$OUT"
COMMON=("$CK" --card "$M" --data "$D/klebsiella/reads.pod5" "$D/ecoli/reads.pod5"
        "$D/misc/pod5ff_multi_fast5_zip.pod5"
        --eval "ecoli=$D/ecoli/reads.pod5:$D/ecoli/reference.fa.gz"
        --eval-ids "$CACHE/r941/val_reads.npz" --max-reads 12 --threads 1 --out "$OUT")
export OMP_NUM_THREADS=1
python -m tools report "${COMMON[@]}" --steps "${STEPS_A:-2000}" --qat-steps "${QAT_STEPS:-600}" \
    --variants "fp32,structured30,structured$A,P$A>D>PTQ,P$A>D>QAT,tflite_int8_structured$A" \
    --work "$W/a" --build-only "$W/a.json" > "$W/a.log" 2>&1 &
PA=$!
python -m tools report "${COMMON[@]}" --steps "${STEPS_B:-600}" --qat-steps "${QAT_STEPS:-600}" \
    --variants "fp32,unstructured50,unstructured70,ptq_minmax,ptq_percentile,qat,tflite_fp32,tflite_int8" \
    --work "$W/b" --build-only "$W/b.json" > "$W/b.log" 2>&1 &
PB=$!
wait $PA $PB
python -m tools report "${COMMON[@]}" --steps "${STEPS_A:-2000}" --qat-steps "${QAT_STEPS:-600}" \
    --from-files "$W/a.json" "$W/b.json" --seconds 2 --rounds 3 --apply 2>&1 | tee "$W/m.log"
