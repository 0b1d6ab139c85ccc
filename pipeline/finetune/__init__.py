"""Stage three: the `finetune` command, the cut (surgery), the activation cache and resumable checkpoints."""
