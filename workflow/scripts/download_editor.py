"""Rule download_editor: resources/editors/{model}/{method}.pt = public pretrained MEND weights (the
ROME project's mend-*.pt files), checked against their sha256, with a sidecar manifest."""

import json

from editscale.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0])

from editscale.data import download_file  # noqa: E402

w = snakemake.params.weights
sha = download_file(w["url"], snakemake.output.editor, sha256=w["sha256"])
with open(snakemake.output.manifest, "w") as f:
    json.dump({"url": w["url"], "sha256": sha, "for_model": snakemake.wildcards.model,
               "method": snakemake.wildcards.method, "source": "public"}, f, indent=1)
log.info("editor weights %s (sha256 %s)", snakemake.output.editor, sha)
