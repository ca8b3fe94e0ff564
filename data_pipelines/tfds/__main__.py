"""`python -m data_pipelines.tfds ARGS` is `diffusets-jax build-tfds ARGS` (see its --help)."""

import sys

from diffusets_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-tfds", *sys.argv[1:]]))
