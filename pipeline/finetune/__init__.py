"""Stage three: the `finetune` command and its settings, the cut (surgery), cached augmentation, the
activation cache, the recipe and resumable checkpoints."""
