#!/bin/sh
# Export an R10.4.1 training checkpoint as a model folder and measure it (card accuracy).
# usage: tools/scripts/finish_r10.sh CKPT MODEL_DIR [export options...]
# Evaluation sets (never trained on, never used for model selection):
#   r10.4.1/remora_can: the 7 reads listed in $CACHE/r10/ft/eval_reads.txt (written by
#   `python -m tools.data_r10`), references from the MD-tagged mappings.bam;
#   r10.4.1/dorado_tests/chr1_MAT.pod5: one 5 kHz read (resampled to 4 kHz by the device
#   pipeline) against chr1_MAT_iupac.fasta.
set -e
cd "$(dirname "$0")/../.."
CK=$1; M=$2; shift 2
DATA=${EDGECALL_SHARED_DATA:-../shared/data}
R=$DATA/r10.4.1
CACHE=${EDGECALL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgecall}
N=$(basename "$M")
export OMP_NUM_THREADS=1
python -m tools.export "$CK" "$M" --chunk 4000 --overlap 400 --pore r10.4.1 --check-data "$R/remora_can/reads.pod5" "$@"
python -m tools.evaluate "$M" "$R/remora_can/reads.pod5" --bam "$R/remora_can/mappings.bam" \
    --read-ids "$CACHE/r10/ft/eval_reads.txt" --dataset remora_can_eval7_heldout --threads 2 \
    --json "$CACHE/eval_${N}_remora7.json" | grep -v per_read
python -m tools.evaluate "$M" "$R/dorado_tests/chr1_MAT.pod5" \
    --reference "$R/dorado_tests/chr1_MAT_iupac.fasta" --dataset chr1_MAT_5khz --threads 2 \
    --json "$CACHE/eval_${N}_chr1mat.json" | grep -v per_read
python -m tools.export "$CK" "$M" --chunk 4000 --overlap 400 --pore r10.4.1 \
    --measured-rates 4000 5000 \
    --eval-json "$CACHE/eval_${N}_remora7.json" "$CACHE/eval_${N}_chr1mat.json" "$@"
