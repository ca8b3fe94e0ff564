"""Fixed, padded batch shapes: a new number of ECGs reuses the compiled sampler (issue 19)."""

import numpy as np
import pytest

from diffusets_jax.pipeline import compiled_batch_size

CONDITIONS = dict(age=60, sex="M", heart_rate=70)


@pytest.mark.parametrize(
    "n, batch_size, expected",
    [
        (1, 16, 1),
        (2, 16, 2),
        (3, 16, 4),
        (5, 16, 8),
        (9, 16, 16),
        (16, 16, 16),
        (40, 16, 16),
        (3, 3, 3),
        (5, 6, 6),
        (1, 1, 1),
        (7, 1, 1),
    ],
)
def test_compiled_batch_size_buckets(n, batch_size, expected):
    assert compiled_batch_size(n, batch_size) == expected


def test_other_sample_counts_reuse_one_compiled_sampler(tiny_pipeline):
    run = lambda n: (  # noqa: E731
        tiny_pipeline(
            "Sinus rhythm",
            num_samples=n,
            seed=3,
            num_steps=2,
            sampler="ddim",
            batch_size=4,
            **CONDITIONS,
        ).signals
    )
    three, four, seven = run(3), run(4), run(7)  # batches of 4: [3 + 1 pad], [4], [4, 3 + 1 pad]
    assert three.shape == (3, 1024, 12) and seven.shape == (7, 1024, 12)
    options = tiny_pipeline.sampling("ddim", 2)
    programs = [program for (o, shape, *_), program in tiny_pipeline._programs.items() if (o, shape[0]) == (options, 4)]
    assert len(programs) == 1 and programs[0]._cache_size() == 1  # batches of 4 rows, compiled once
    # Padding rows do not leak into the real ones: ECG j is the same in every run.
    np.testing.assert_allclose(three, four[:3], atol=1e-5)
    np.testing.assert_allclose(four, seven[:4], atol=1e-5)
