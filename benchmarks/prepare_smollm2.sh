#!/usr/bin/env bash
# Make the SmolLM2-135M folder the benchmarks use, offline, loadable by this project's pinned
# transformers (4.57):
#
#   benchmarks/prepare_smollm2.sh [DEST]        (default /work/models/smollm2)
#
# ../shared/tools/smollm2-offline needs a transformers 5 Python (with 4.57 it stops at
# `del model.config.quantization_config`), so it runs in a side venv (.venv-smollm2, ~1 min).
# transformers 5 writes two things 4.57 misreads, normalised here afterwards:
#  - tokenizer_config.json names the class "TokenizersBackend" -> PreTrainedTokenizerFast;
#  - config.json keeps RoPE's base in "rope_parameters" -> copied to "rope_theta" (else 4.57
#    silently uses 10,000 instead of SmolLM2's 100,000).
set -euo pipefail
dest=${1:-/work/models/smollm2}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tool="$here/../shared/tools/smollm2-offline"
[ -x "$tool" ] || { echo "missing $tool" >&2; exit 1; }
side="$here/.venv-smollm2"
if [ ! -x "$side/bin/python" ]; then
  python3 -m venv "$side"
  "$side/bin/pip" install -q torch==2.13.0 transformers==5.24.0
fi
PATH="$side/bin:$PATH" bash "$tool" "$dest"
"$here/.venv/bin/python" - "$dest" <<'PY'
import json, sys
from pathlib import Path
dest = Path(sys.argv[1])
tc = dest / "tokenizer_config.json"
cfg = json.loads(tc.read_text())
cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
tc.write_text(json.dumps(cfg, indent=1))
mc = dest / "config.json"
cfg = json.loads(mc.read_text())
if "rope_parameters" in cfg and "rope_theta" not in cfg:
    cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
mc.write_text(json.dumps(cfg, indent=1))
print(f"normalised {dest} for transformers 4.x (rope_theta={cfg.get('rope_theta')})")
PY
