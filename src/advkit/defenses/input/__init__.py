"""Input defenses: detectors and purifiers that sit in front of a classifier at test time.

- :mod:`advkit.defenses.input.magnet`: MagNet (Meng & Chen, ACM CCS 2017), its fitted
  defense (detect, reform, save/load).
- :mod:`advkit.defenses.input.magnet_autoencoder`: MagNet's autoencoders and their training.
- :mod:`advkit.defenses.input.pipeline`: the defended model (reformer, then classifier), its
  BPDA view for adaptive attacks, and :func:`attack_defended`.
"""
