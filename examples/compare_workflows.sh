#!/usr/bin/env bash
# Compare SAMRI's Generic workflow with Generic Masked (U-Net brain masks) on the example data:
# register twice, then compare the Volume/Smoothness Conservation Factors of the two runs.
#   bash examples/compare_workflows.sh [WORK_FOLDER]
set -euo pipefail
work=${1:-compare_example}
bin=$(dirname "$0")/../.venv/bin
[ -x "$bin/samri_ml-example" ] || bin=$(dirname "$(command -v samri_ml-example)")
"$bin/samri_ml-example" "$work/bids" --subjects 3
tpl="$work/bids/template/tpl-Phantom_T2w.nii.gz"
mask="$work/bids/template/tpl-Phantom_desc-brain_mask.nii.gz"
for masking in none unet; do
  "$bin/samri_ml-register" "$work/bids" "$work/derivatives/$masking" participant --fast \
    --template "$tpl" --template-mask "$mask" --masking "$masking" -w "$work/work_$masking"
done
"$bin/samri_ml-qc" compare "$work/derivatives/none" "$work/derivatives/unet" \
  --labels Generic "Generic Masked" --out "$work/qc_comparison"
echo "table, statistics and violin plots in $work/qc_comparison"
