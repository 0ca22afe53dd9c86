"""Rule download_editor: resources/editors/{model}/{method}.pt = public pretrained MEND weights (the
ROME project's mend-*.pt files), with a sidecar manifest.

The sha256 is checked against the config's ``sha256`` when given, else against the one recorded in
resources/editors/weights_manifest.json on the first download from that URL (which records it);
every later use of the file checks its bytes again (editscale.editors.published)."""

import json

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0])

from editscale.editors.published import fetch_editor_weights  # noqa: E402

w = snakemake.params.weights
info = fetch_editor_weights(w["url"], snakemake.output.editor, sha256=w.get("sha256"))
with open(snakemake.output.manifest, "w") as f:
    json.dump(
        {
            **info,
            "for_model": snakemake.wildcards.model,
            "method": snakemake.wildcards.method,
            "source": "public",
        },
        f,
        indent=1,
    )
log.info(
    "editor weights %s (sha256 %s, %s)",
    snakemake.output.editor,
    info["sha256"],
    info["sha256_check"],
)
