#!/bin/sh
# Copy the browser dependencies installed from the npm registry (npm ci) into the package's
# static folder, where the server serves them (no CDN: the UI and the API docs at /docs work
# on an air-gapped network).
set -eu
cd "$(dirname "$0")"
[ -d node_modules/echarts ] && [ -d node_modules/swagger-ui-dist ] || npm ci --no-audit --no-fund
out=../src/gpufleet/web/static/vendor
mkdir -p "$out"
cp node_modules/echarts/dist/echarts.common.min.js "$out/echarts.min.js"
cp node_modules/echarts/LICENSE "$out/echarts.LICENSE.txt"
# Swagger UI for /docs (gpufleet.web.apidocs)
cp node_modules/swagger-ui-dist/swagger-ui-bundle.js "$out/swagger-ui-bundle.js"
cp node_modules/swagger-ui-dist/swagger-ui.css "$out/swagger-ui.css"
cp node_modules/swagger-ui-dist/LICENSE "$out/swagger-ui.LICENSE.txt"
version() { node -p "require('./node_modules/$1/package.json').version"; }
echo "web-assets: copied echarts $(version echarts) and swagger-ui-dist $(version swagger-ui-dist) to $out"
