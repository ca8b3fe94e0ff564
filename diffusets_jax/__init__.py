"""diffusets-jax: DiffuSETS 12-lead ECG generation in JAX/Flax.

Report text + age, sex and heart rate in; `(B, 1024, 12)` ECGs in mV at 102.4 Hz out.
The heavy parts (JAX, the text model) load on first use, so `import diffusets_jax` is cheap.
"""

from diffusets_jax.constants import FS, LEADS, NUM_SAMPLES

__version__ = "0.1.0"
__all__ = ["FS", "LEADS", "NUM_SAMPLES", "Pipeline", "Sampling", "__version__"]


def __getattr__(name):
    if name == "Pipeline":
        from diffusets_jax.pipeline import Pipeline

        return Pipeline
    if name == "Sampling":
        from diffusets_jax.sampling import Sampling

        return Sampling
    raise AttributeError(f"module 'diffusets_jax' has no attribute {name!r}")
