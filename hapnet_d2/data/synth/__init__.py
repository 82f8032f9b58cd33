"""Built-in synthetic RGB-thermal street scenes in the MFNet layout.

Nobody can download MFNet on a fresh machine, so this package draws a small benchmark with
MFNet's nine classes on which the whole pipeline runs on a CPU, and on which fusing thermal
with RGB beats either modality alone:

* by day the RGB image shows every class with its own (jittered, not unique) colours under a
  lighting gradient and sensor noise;
* by night the RGB image is dark and noisy; cars, people and bikes copy the colour of the
  background they hide (their contrast is below the noise, apart from a few car lights), while
  the painted classes (lane markings, car stops, guardrails, cones, bumps) reflect a little
  light and stay faintly visible;
* the thermal image is a smooth background temperature field (warmer by day) plus noise in
  which people are the warmest objects and cars (engine, wheels) and bikes are warm; painted
  classes have no heat signature, so thermal alone cannot find them.

Every image is drawn from its own generator seeded by ``(seed, index)``, so the output is
byte-identical for a seed. The layout is MFNet's::

    DIR/images/NAME.png   4-channel uint8 PNG (R, G, B, thermal)
    DIR/labels/NAME.png   uint8 class ids 0..8
    DIR/{train,val,test,test_day,test_night}.txt   one NAME per line, NAME like 00012D / 00013N
    DIR/synth_meta.json   the generation parameters (written last: marks a complete dataset)

Command line: ``python -m hapnet_d2.data.synth --out DIR [--seed S] [--num-train N]
[--num-val V] [--num-test M] [--size W H]``.
"""

from .dataset import SPLITS, SynthSpec, ensure_synth_dataset, generate_dataset, is_complete, main
from .objects import (
    BIKE,
    BUMP,
    CAR,
    CAR_STOP,
    COLOR_CONE,
    CURVE,
    GUARDRAIL,
    PERSON,
    UNLABELED,
)
from .scene import render_sample

__all__ = [
    "SPLITS",
    "SynthSpec",
    "render_sample",
    "generate_dataset",
    "ensure_synth_dataset",
    "is_complete",
    "main",
    "UNLABELED",
    "CAR",
    "PERSON",
    "BIKE",
    "CURVE",
    "CAR_STOP",
    "GUARDRAIL",
    "COLOR_CONE",
    "BUMP",
]
