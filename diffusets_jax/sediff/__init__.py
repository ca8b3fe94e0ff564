"""SE-Diff extensions (Wang et al., ICLR 2026): the ECGSYN simulator prior and its per-class fit.

* `diffusets_jax.sediff.ecgsyn`: the McSharry et al. (2003) dynamical ECG model in JAX.
* `diffusets_jax.sediff.fit_params`: per-class, per-lead ECGSYN wave parameters fitted to
  class-mean real beats (`ecgsyn_params.json`).
* `diffusets_jax.sediff.beat_decoder`: the beat decoder, VAE latent -> one R-aligned beat per lead.
* `diffusets_jax.sediff.beat_decoder_training`: its Stage-1 training on a trained VAE's latents.
* `diffusets_jax.sediff.physics`: the Euler and inter-lead losses on the decoded beat of x0_hat.
* `diffusets_jax.sediff.ablation`: `diffusets-jax ablate`, the base model and each addition
  fine-tuned on one budget and scored by the evaluation suite.
* `diffusets_jax.sediff.ablation_evaluation`: the ablation's held-out conditions, generation and
  scoring of each variant, and its results table and files.

See docs/se-diff.md ("ECGSYN prior") and McSharry et al., "A dynamical model for generating
synthetic electrocardiogram signals", IEEE TBME 50(3):289-294, 2003.
"""
