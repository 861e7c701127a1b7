# Sourced by scripts: create or update the project virtual environment in .venv.
# Reinstalls only when pyproject.toml changed since the last install.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "env: creating virtual environment $venv"
  "$py" -m venv "$venv"
fi
stamp="$venv/.installed-$(sha1sum "$repo/pyproject.toml" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "env: installing dataflow[dev] into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install -q -e "$repo[dev]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
# Large messages: keep glibc from returning and re-faulting memory per record (docs/performance).
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-16777216}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-67108864}"
