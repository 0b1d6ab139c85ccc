"""Cached feature extraction for transfer learning on CIFAR-10 (see README.md)."""
