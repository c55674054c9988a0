"""Per-latent results out of sae_fast: a static HTML feature browser and exports for other tools.

`LatentTable` gathers, for the latents of one seed, what the stability run and the study know about each
(p̂, label, best cross-seed partners, firing frequency, candidate subspace, activation histogram, top
activations). `write_site` renders it as a static browser that works from `file://` and stays usable at 2^16
latents and beyond (the data is split into small chunk scripts loaded on demand); `export_safetensors` and
`export_neuronpedia` write it for dashboards and auto-interpretation pipelines.
"""

from .export import export_neuronpedia, export_safetensors
from .site import write_site
from .table import LatentTable, activation_stats, latent_table

__all__ = ["LatentTable", "activation_stats", "export_neuronpedia", "export_safetensors", "latent_table",
           "write_site"]
