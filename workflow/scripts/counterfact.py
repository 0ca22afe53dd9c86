"""Rule counterfact: resources/data/counterfact.json = a download checked against its sha256, or a
relative symlink to the configured local file (checked when a sha256 is configured)."""

from pathlib import Path

from editscale.io.provenance import setup_rule_logging

log = setup_rule_logging(snakemake.log[0])

from editscale.data.download import download_file, link_relative  # noqa: E402
from editscale.io.provenance import sha256_file  # noqa: E402

out = Path(snakemake.output[0])
expected = snakemake.params.sha256
if snakemake.params.url is not None:
    digest = download_file(snakemake.params.url, out, sha256=expected)
else:
    src = Path(snakemake.input[0]).resolve()
    digest = sha256_file(src)
    if expected is not None and digest != expected:
        raise ValueError(
            f"config key 'counterfact.sha256': {src} has sha256 {digest}, expected {expected}"
        )
    link_relative(src, out)  # relative: a copied or moved project does not read the original's file
log.info("CounterFact at %s (sha256 %s)", out, digest)
