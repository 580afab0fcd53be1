"""Metric implementations behind `scorelib.evaluate` (import the public names from there).

inception.py  the FID Inception-v3 network and its weights loader
fid.py        Fréchet distance, KID, Inception Score, feature statistics and their .npz cache
digits.py     the 8×8 digits classifier and the digits FID
toy.py        sliced Wasserstein, RBF MMD and mean log-density for low-dimensional samples
"""
