#!/bin/bash
# Compression report + default INT8 model for a shipped R9.4.1 FP32 parent, in one go:
# parallel --build-only processes (structured chain / everything else / students trained
# elsewhere), then one measuring run over all files (same threads, same run) that applies
# the result to the card.
# usage: tools/scripts/compress_r941.sh CKPT MODEL_DIR OUT_DIR
# env: STEPS_A (per pruning stage, default 2000), STEPS_B (default 600), QAT_STEPS (600),
#      AMOUNT (structured %, default 40), EDGECALL_LITERT_PYTHON (a python with litert-torch),
#      TRAINED="LABEL=CKPT ..." (students trained by tools train, e.g. a pruned student
#      fine-tuned with --init-from: built as LABEL, LABEL>PTQ, LABEL>QAT, LABEL>QATr,
#      tflite_int8_LABEL),
#      EXTRA_B (more variants for the second build, e.g. unstructured85,delayed50),
#      EXTRA_D (variants for a fourth build process "d", STEPS_B steps per stage),
#      REUSE=1 (keep the builds of an earlier run whose JSON exists: a, b, d, t_LABEL)
set -eu
cd "$(dirname "$0")/../.."
CK=$1; M=$2; OUT=$3
DATA=${EDGECALL_SHARED_DATA:-../shared/data}
D=$DATA/r9.4.1
CACHE=${EDGECALL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgecall}
A=${AMOUNT:-40}
W=$CACHE/compress/final_$(basename "$M")
mkdir -p "$W" "$OUT"
COMMON=("$CK" --card "$M" --data "$D/klebsiella/reads.pod5" "$D/ecoli/reads.pod5"
        "$D/misc/pod5ff_multi_fast5_zip.pod5"
        --eval "ecoli=$D/ecoli/reads.pod5:$D/ecoli/reference.fa.gz"
        --eval-ids "$CACHE/r941/val_reads.npz" --max-reads 12 --threads 1 --out "$OUT")
export OMP_NUM_THREADS=1
PIDS=()
JSONS=()
build() {  # build NAME STEPS VARIANTS [extra args...]
    local name=$1 steps=$2 variants=$3
    shift 3
    JSONS+=("$W/$name.json")
    if [ "${REUSE:-0}" = 1 ] && [ -f "$W/$name.json" ]; then
        return
    fi
    python -m tools report "${COMMON[@]}" --steps "$steps" --qat-steps "${QAT_STEPS:-600}" \
        --variants "$variants" --work "$W/$name" --build-only "$W/$name.json" "$@" \
        > "$W/$name.log" 2>&1 &
    PIDS+=($!)
}
build a "${STEPS_A:-2000}" "fp32,structured30,structured$A,P$A>D>PTQ,P$A>D>QAT,tflite_int8_structured$A"
B="fp32,unstructured50,unstructured70,ptq_minmax,ptq_percentile,qat,tflite_fp32,tflite_int8"
build b "${STEPS_B:-600}" "$B${EXTRA_B:+,$EXTRA_B}"
for t in ${TRAINED:-}; do  # one build per trained student, reusable on its own
    build "t_${t%%=*}" "${STEPS_B:-600}" "fp32,${t%%=*}>QAT,${t%%=*}>QATr" --trained "$t"
done
if [ -n "${EXTRA_D:-}" ]; then
    build d "${STEPS_B:-600}" "fp32,$EXTRA_D"
fi
for p in "${PIDS[@]}"; do wait "$p"; done
python -m tools report "${COMMON[@]}" --steps "${STEPS_A:-2000}" --qat-steps "${QAT_STEPS:-600}" \
    --from-files "${JSONS[@]}" --seconds 2 --rounds 3 --apply 2>&1 | tee "$W/m.log"
