"""Training: datasets, synthetic video, mini-sequence sampler, processing, Lovasz loss, trainer."""
