"""Experiment configs: each file defines get_config() returning an ml_collections.ConfigDict."""
