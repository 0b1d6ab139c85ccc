"""Stage zero, the images: CIFAR-10 batches, tarballs, image folders and the Keras download as bounded
uint8 batches with labels and source indices; the fixed split; the fingerprint; row -> source image."""
