#!/usr/bin/env bash
# Compare SAMRI's Generic workflow with Generic Masked (U-Net brain masks) on the example data:
# register twice, then compare the Volume/Smoothness Conservation Factors of the two runs.
#   bash examples/compare_workflows.sh [WORK_FOLDER]
set -euo pipefail
work=${1:-compare_example}
case "$work" in /*) full=$work ;; *) full=$PWD/$work ;; esac
case "$full" in *[[:space:]]*)
  # samri_ml-register refused its work dir with a hint to give -w, which this script does not take
  echo "compare_workflows.sh: $full has a space in its path, which the ANTs steps cannot" \
    "take; hint: bash $0 /path/without/spaces" >&2; exit 1 ;;
esac
bin=$(dirname "$0")/../.venv/bin
if [ ! -x "$bin/samri_ml-example" ]; then
  # without this check: "./samri_ml-example: No such file or directory"
  command -v samri_ml-example >/dev/null || { echo "compare_workflows.sh: samri_ml-example" \
    "not found (no .venv beside examples/, none on PATH); hint: make install, or activate" \
    "the environment samri_ml is installed in" >&2; exit 1; }
  bin=$(dirname "$(command -v samri_ml-example)")
fi
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
