"""siamrdm: predict brain RDMs from images with end-to-end trained Siamese networks.

Modules, in the order a reader meets them: data (images and RDM files), rdm (upper triangles, ranks),
scoring (the Algonauts 2019 metric and noise ceilings), backbones (pretrained bodies), model (the Siamese
network), train (fitting), predict (RDMs and submissions), baselines, plots, report, bench, cli.
"""

__version__ = "0.1.0"
