"""MedFedPure: federated brain-tumour MRI classification defended by MAE detection and diffusion purification."""

__version__ = "0.1.0"
