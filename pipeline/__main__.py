import os
import sys

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) hides the real output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pipeline.cli import main  # noqa: E402

sys.exit(main())
