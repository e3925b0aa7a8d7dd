"""The three networks of MedFedPure: classifier (mixture of experts), MAE detector, diffusion purifier."""
