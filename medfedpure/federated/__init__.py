"""Flower apps (ServerApp / ClientApp) for the three models; the training steps are plain functions in `steps`."""
