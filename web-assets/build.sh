#!/bin/sh
# Copy the browser dependencies installed from the npm registry (npm ci) into the package's
# static folder, where the server serves them (no CDN: the UI works on an air-gapped network).
set -eu
cd "$(dirname "$0")"
[ -d node_modules/echarts ] || npm ci --no-audit --no-fund
out=../src/gpufleet/web/static/vendor
mkdir -p "$out"
cp node_modules/echarts/dist/echarts.common.min.js "$out/echarts.min.js"
cp node_modules/echarts/LICENSE "$out/echarts.LICENSE.txt"
echo "web-assets: copied echarts $(node -p 'require("./node_modules/echarts/package.json").version') to $out"
