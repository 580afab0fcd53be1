"""scorelib: score-based generative modelling in one σ-space interface."""
