"""Rule import_stats: resources/stats_published/{model}/layer{layer}.h5 = ROME/MEMIT's published key
statistics (stats.published: an .npz by URL), downloaded with its sha256 checked (or recorded on
first download in resources/stats_published/published_manifest.json) and converted, refused when
made for another model or layer (editscale.editing.key_stats.import_published_second_moment).
A local rule (it downloads): the model is built from its config on the meta device (module names
and widths only, no weights read), so the job needs about twice the .npz file's size in memory."""

from pathlib import Path

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0], snakemake.threads)

from editscale.editing.key_stats import import_published_second_moment  # noqa: E402
from editscale.editors.published import fetch_editor_weights  # noqa: E402
from editscale.lm.models import model_identity, model_skeleton  # noqa: E402

wc = snakemake.wildcards
entry = snakemake.params.entry
out = Path(snakemake.output[0])
npz = out.with_suffix(".npz")
manifest = out.parent.parent / "published_manifest.json"
info = fetch_editor_weights(entry["url"], npz, sha256=entry.get("sha256"), manifest=manifest)
model_dir = Path(snakemake.input.model).parent
model = model_skeleton(model_dir)
import_published_second_moment(
    npz,
    out,
    model=model,
    layer=int(wc.layer),
    source=entry["url"],
    hub_name=snakemake.params.hub_name,
    attrs={
        **model_identity(model_dir),
        "corpus": "published",
        "corpus_fingerprint": info["sha256"],
        "published_sha256": info["sha256"],
        "published_sha256_check": info["sha256_check"],
    },
)
npz.unlink()
