"""Experiment configurations: each module's `get_config()` returns an `ml_collections.ConfigDict`.

Load one by name (`small`, `paper`) or by file path with `diffusets_jax.config.load_config`.
"""
