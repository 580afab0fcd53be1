"""Records tests/data/iddpm_spacing.json from improved-diffusion's own `space_timesteps` (not run by the tests).

Usage, outside the repository, with a checkout of openai/improved-diffusion:
    python iddpm_spacing.py /path/to/improved-diffusion out.json

For T ∈ {1000, 4000} and n = 2 … 1000: the first 12 hex digits of the SHA-1 of the kept timesteps
`space_timesteps(T, str(n))` (improved_diffusion/respace.py), sorted ascending and joined by commas; and the
full sets of a few section strings ("10,15,20", "ddimN") and the strings it refuses.
"""

import hashlib
import json
import sys

sys.path.insert(0, sys.argv[1])
from improved_diffusion.respace import space_timesteps


def digest(steps):
    return hashlib.sha1(",".join(map(str, sorted(steps))).encode()).hexdigest()[:12]


def main():
    digests = {str(T): [digest(space_timesteps(T, str(n))) for n in range(2, 1001)] for T in (1000, 4000)}
    sections = {}
    for T, s in [(300, "10,15,20"), (1000, "10,15,20"), (1000, "50,30,20,10"), (4000, "5,5,100"), (1000, "7"),
                 (1000, "ddim50"), (1000, "ddim25"), (1000, "ddim7"), (4000, "ddim100"), (1000, "ddim1000"),
                 (250, "ddim3"), (250, "0,10")]:
        sections[f"{T}:{s}"] = sorted(space_timesteps(T, s))
    refused = []
    for T, s in [(1000, "ddim999"), (1000, "ddim1"), (30, "20,20"), (300, "1001")]:
        try:
            space_timesteps(T, s)
        except ValueError:
            refused.append(f"{T}:{s}")
    out = {"source": "openai/improved-diffusion improved_diffusion/respace.py space_timesteps; recorded by "
                     "tests/data/recorders/iddpm_spacing.py",
           "digest": "sha1 of the ascending kept timesteps joined by ',' (first 12 hex digits), n = 2 ... 1000",
           "sections": sections, "refused": refused, "digests": digests}
    with open(sys.argv[2], "w") as f:
        json.dump(out, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
