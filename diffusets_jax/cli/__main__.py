"""`python -m diffusets_jax.cli` is the `diffusets-jax` command."""

import sys

from diffusets_jax.cli import main

sys.exit(main())
