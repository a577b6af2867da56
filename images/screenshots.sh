#!/usr/bin/env bash
# Screenshots of the MLflow UI on the local store (./mlflow.db) after `make run`, taken with
# headless Chromium (Debian: apt-get install chromium). Usage: images/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
store="sqlite:///$PWD/mlflow.db"
port=${UI_PORT:-5055}
run_id=$(.venv/bin/python -c "
from mlflow.tracking import MlflowClient
runs = MlflowClient('$store').search_runs(['0'], 'attributes.status = \"FINISHED\"', max_results=1)
print(runs[0].info.run_id if runs else '')")
[ -n "$run_id" ] || { echo "images/screenshots.sh: no finished run in ./mlflow.db: run make run first" >&2; exit 1; }

.venv/bin/mlflow ui --backend-store-uri "$store" --host 127.0.0.1 --port "$port" >/tmp/mlflow-ui.log 2>&1 &
ui=$!
trap 'kill $ui 2>/dev/null' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done

shoot() {  # shoot FILE URL
  chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$(mktemp -d)" \
    --window-size=1400,1000 --virtual-time-budget=60000 --run-all-compositor-stages-before-draw --screenshot="$1" "$2" 2>/dev/null
  echo "wrote $1"
}
base="http://127.0.0.1:$port/#/experiments/0"
shoot images/experiment-runs.png "$base/runs"
shoot images/run-overview.png "$base/runs/$run_id"
shoot images/run-metrics.png "$base/runs/$run_id/model-metrics"
