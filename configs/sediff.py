"""SE-Diff's own hyperparameters: the ECGSYN fit, the beat decoder, experience retrieval and the ablation.

The SE-Diff commands read their defaults from here (`--config sediff`, the default) and take
`--set section.key=value` overrides like the training commands; an explicit option such as
`--steps` wins over both:

    diffusets-jax train-beat-decoder --workdir workdirs/small_cfg --dataset data/ptbxl --set beat_decoder.base=128
    diffusets-jax augment-dataset --dataset data/ptbxl --out data/ptbxl_rag --set retrieval.k=8

The physics-loss weights of a U-Net run are part of the training config (`sediff` in
`configs/common.py`); `ablation.euler_weight` / `interlead_weight` are what the ablation sets there.
Source of each choice: docs/se-diff.md (SE-Diff, Wang et al., ICLR 2026, arXiv:2511.09895, does
not publish most of them).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()

    f = c.ecgsyn_fit = ml_collections.ConfigDict()
    f.steps = 2000  # Adam steps per class
    f.min_records = 5  # smallest class kept (records with detected beats)
    f.folds = (1, 2, 3, 4, 5, 6, 7, 8)  # training folds only

    b = c.beat_decoder = ml_collections.ConfigDict()
    # The released width is 128 (a batch-32 step takes ~0.2 s on a 2-core CPU); 32 (~0.03 s, 38 k
    # parameters) trains in ~1.5 min. `beat_decoder.base=128`: official.
    b.base = 32
    b.steps = 2000
    b.batch_size = 32
    b.learning_rate = 3e-3
    b.spectral_weight = 0.01  # SE-Diff's alpha_spec (the paper's value is not known)
    b.shifts = 3  # circularly shifted copies of each training ECG (augmentation; 0: none)
    b.seed = 0
    b.log_every = 50  # steps between records of WORKDIR/beat_decoder_metrics.jsonl
    # Orbax checkpoints in WORKDIR/beat_decoder_checkpoints every N steps and at the end (the last
    # `keep_checkpoints` kept): an interrupted run resumes there when run again.
    b.checkpoint_every = 500
    b.keep_checkpoints = 2

    r = c.retrieval = ml_collections.ConfigDict()
    r.k = 5  # neighbours per query
    r.folds = (1, 2, 3, 4, 5, 6, 7, 8)  # the index holds training folds only; 9 and 10 are held out
    # Per-view weights. The diagnostic content (report embedding, statement and code sets)
    # dominates; age, sex and heart rate break ties between diagnostically similar records.
    # SE-Diff's lambda_1..3 are not published; diagnoses count double the medications and procedures.
    r.weights = ml_collections.ConfigDict(
        {
            "text": 1.0,
            "statements": 1.0,
            "age": 0.2,
            "sex": 0.1,
            "heart_rate": 0.3,
            "diagnoses": 1.0,
            "medications": 0.5,
            "procedures": 0.5,
        }
    )
    r.summariser = "keyword"  # or "llm" (OpenAI-style chat; needs OPENAI_API_KEY)
    r.max_statements = 6  # statements per augmented report (the query's own are kept)
    r.min_support = 0.4  # keyword: fraction of neighbours stating a finding
    r.min_lift = 1.5  # keyword: neighbour fraction relative to the index-wide prevalence (capped at all)
    r.llm_model = "gpt-4o-mini"

    a = c.ablation = ml_collections.ConfigDict()
    a.steps = 1000  # U-Net steps each variant trains after the base checkpoint
    a.euler_weight = 0.05
    a.interlead_weight = 100.0
    a.num_samples = 256  # ECGs generated and scored per variant
    a.sampler = "ddim"
    a.num_steps = 50
    a.batch_size = 64
    a.weights = "ema"
    a.seed = 0
    return c
