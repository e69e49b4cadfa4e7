"""The synth suite: procedural stand-ins for UCF-101, SSv2, ImageNet-100 and Diving-48 V2.

`generate_suite(out_root, scale="demo", seed=0, parts=None, workers=None)` writes four raw trees in the
real datasets' published layouts, so `python -m shards.build` reads them with the real adapters:

    synth-ucf     UCF-101 layout (MPEG-4 .avi, classInd / trainlist0k / testlist0k). 20 actions =
                  10 digit identities x {Slide (any direction), Spin (either sense)}: ZeroSlide,
                  ZeroSpin, ..., NineSpin. Scene, background, colour, size, tilt, direction and sense
                  are drawn per clip, independently of the class.
    synth-ssv2    SSv2 layout (VP9 .webm, labels/*.json). 16 templates in 8 time-reversed pairs about
                  two objects (closer / away, left->right / right->left, up / down, into / out of view,
                  covering / uncovering, together / apart, camera in / out, spin-then-move /
                  move-then-spin). Appearance is random, so only the order of events tells a pair apart.
    synth-in      ImageNet-100 layout (JPEG, train/<wnid>/, val/<wnid>/, Labels.json). 100 classes =
                  10 digits x 10 drawing styles; random position, scale, rotation, background.
    synth-diving  Diving-48 V2 layout (H.264 .mp4, JSON splits, vocabulary). 48 classes = 4 takeoffs x
                  3 somersault counts x 4 twist counts of a diver; small differences between classes.

Sprites are scikit-learn's handwritten digits; backgrounds and textures are crops of its sample photos.
Held-out splits use digit images and photo regions that training never uses (see `assets`). Every file
is a pure function of (seed, scale, sample), encoded single-threaded with bit-exact flags, so the same
seed gives byte-identical trees. Scales (`scales.SCALES`): "demo" (CPU, 64 px, 32 frames), "gpu"
(224 px, 48-64 frames, tens of thousands of samples) and "test" (tiny, for the test suite).
Nothing here imports torch. docs/synth.md lists the classes, sizes and sanity baselines.
"""
from .scales import SCALES, SuiteScale, resolve_scale
from .suite import COMPLETE_MARKER, PART_NAMES, generate_suite

__all__ = ["generate_suite", "PART_NAMES", "SCALES", "SuiteScale", "resolve_scale", "COMPLETE_MARKER"]
