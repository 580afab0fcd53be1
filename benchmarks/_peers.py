"""Optional peer libraries for side-by-side measurements (the `peers` extra): k-diffusion's samplers
and diffusers' schedulers, loaded by `scorelib.peers` (None when a peer is not installed)."""

from scorelib.peers import diffusers_schedulers, k_diffusion_sampling

__all__ = ["diffusers_schedulers", "k_diffusion_sampling"]
