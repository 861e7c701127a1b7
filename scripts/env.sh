# Sourced by scripts: create or update the project virtual environment in .venv.
# Reinstalls only when pyproject.toml changed since the last install.
#   DATAFLOW_RUNTIME=1  (scripts/demo): the runtime dependencies only, in .venv-run
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${DATAFLOW_RUNTIME:-0}" = 1 ]; then
  venv="$repo/.venv-run"; target="$repo"; what="dataflow (runtime dependencies only)"
else
  venv="$repo/.venv"; target="$repo[dev]"; what="dataflow[dev] (runtime, test and lint tools)"
fi
# The interpreter itself, not a link to it: the venv's python points at this path for good.
py="$(command -v "${PYTHON:-python3}" || echo "${PYTHON:-python3}")"
py="$(readlink -f "$py" || echo "$py")"
if [ ! -x "$venv/bin/python" ]; then
  echo "env: creating virtual environment $venv"
  "$py" -m venv --clear "$venv"  # --clear: a venv whose interpreter went away is made anew
fi
stamp="$venv/.installed-$(sha1sum "$repo/pyproject.toml" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "env: installing $what into $venv with pip (about 30 s the first time; log: $venv/pip.log)"
  if ! { "$venv/bin/python" -m pip install -q --upgrade pip &&
         "$venv/bin/python" -m pip install -q -e "$target"; } >"$venv/pip.log" 2>&1; then
    tail -20 "$venv/pip.log" >&2
    echo "env: error: pip failed (log: $venv/pip.log)" >&2
    exit 1
  fi
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
# Large messages: keep glibc from returning and re-faulting memory per record.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-16777216}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-67108864}"
