#!/bin/sh
# Export an R9.4.1 training checkpoint as a model folder and measure it (card accuracy).
# usage: tools/scripts/finish_r941.sh CKPT MODEL_DIR
# Needs the R9.4.1 dataset built by `python -m tools.data /work/cache/r941` (for the ids of
# the 12 held-out validation reads) and ../shared/data.
set -e
cd "$(dirname "$0")/../.."
CK=$1; M=$2; shift 2
DATA=${EDGECALL_SHARED_DATA:-../shared/data}
E=$DATA/r9.4.1/ecoli
CACHE=${EDGECALL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgecall}
export OMP_NUM_THREADS=1
python -m tools.export "$CK" "$M" --chunk 4000 --overlap 400 --check-data "$E/reads.pod5"
python -m tools.evaluate "$M" "$E/reads.pod5" --reference "$E/reference.fa.gz" \
    --read-ids "$CACHE/r941/val_read_ids.txt" --dataset ecoli_val12_heldout --threads 2 \
    --json "$CACHE/eval_$(basename "$M")_val12.json" | grep -v per_read
python -m tools.evaluate "$M" "$E/reads.pod5" --reference "$E/reference.fa.gz" \
    --dataset ecoli_all72_incl_60_training_reads --threads 2 \
    --json "$CACHE/eval_$(basename "$M")_all72.json" | grep -v per_read
