#!/usr/bin/env bash
# Everything gpufleet needs on a fresh Debian machine: system packages used by the tests and
# benchmarks (sshd for agent-less tests, Slurm and munge for the Slurm dispatcher's tests,
# promtool, node_exporter and wrk for benchmarks), and a
# Python virtual environment with gpufleet installed in it. Safe to run again: it only adds
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ -x /usr/bin/prometheus-node-exporter ] || need+=(prometheus-node-exporter)
# alerts: forwarding is tested against the real Alertmanager on loopback
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
# web UI: Chromium for the browser tests and benchmark (Playwright drives the system's build and
# never downloads one); npm fetches the UI's JavaScript dependencies (web-assets/) at build time
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
command -v npm >/dev/null 2>&1 || need+=(npm)
# the Slurm dispatcher's tests start a real single-node Slurm (slurmctld, slurmd) and munged
command -v slurmctld >/dev/null 2>&1 || [ -x /usr/sbin/slurmctld ] || need+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ] || need+=(munge)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "setup: warning: missing ${need[*]}; install them (apt-get install ${need[*]})" >&2
  fi
fi

# PostgreSQL (the PostgreSQL backend's tests use the local server on 127.0.0.1:5432, trust
# auth): start the local cluster when it is installed but stopped.
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  version=$(ls /etc/postgresql 2>/dev/null | head -n 1)
  if [ "$(id -u)" = 0 ] && [ -n "$version" ] && command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "setup: starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  else
    echo "setup: warning: PostgreSQL is not running on 127.0.0.1:5432; its tests will skip" \
         "(or fail in CI)" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.gpufleet-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing gpufleet and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi

# web UI assets: ECharts and Swagger UI (the API docs at /docs) from the npm registry, copied
# into the package (served by the server, no CDN). Built once; again when
# web-assets/package-lock.json changes.
vendor=src/gpufleet/web/static/vendor/echarts.min.js
swagger=src/gpufleet/web/static/vendor/swagger-ui-bundle.js
if [ ! -f "$vendor" ] || [ ! -f "$swagger" ] || [ web-assets/package-lock.json -nt "$vendor" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "setup: building the web UI's assets (npm ci in web-assets/)"
    (cd web-assets && npm ci --no-audit --no-fund --loglevel=error >/dev/null && sh build.sh)
  else
    echo "setup: warning: npm is missing; the charts and /docs need it (apt-get install npm)" >&2
  fi
fi
