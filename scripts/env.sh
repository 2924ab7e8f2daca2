# Sourced by the Makefile's recipes: puts uv on PATH and, where uv cannot download a Python
# (machines like the CI ones, see platform-notes), points it at a local Python >= 3.12.
export PATH="$HOME/.local/bin:$PATH"
if [ -z "${UV_PYTHON:-}" ]; then
  if command -v pyenv >/dev/null 2>&1; then
    for v in 3.13 3.12; do
      candidate=$(ls -d "$(pyenv root)"/versions/"$v".*/bin/python3 2>/dev/null | sort -V | tail -n 1 || true)
      if [ -n "$candidate" ]; then
        export UV_PYTHON="$candidate" UV_PYTHON_DOWNLOADS=never
        break
      fi
    done
  fi
  if [ -z "${UV_PYTHON:-}" ]; then
    for candidate in python3.13 python3.12; do
      if command -v "$candidate" >/dev/null 2>&1; then
        export UV_PYTHON="$(command -v "$candidate")"
        break
      fi
    done
  fi
fi
