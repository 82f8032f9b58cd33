"""``python -m hapnet_d2.data.synth --out DIR ...``: generate the synthetic dataset."""

import logging

from .dataset import main

logging.basicConfig(level=logging.INFO, format="%(message)s")
main()
