"""The FCOS library shared by training and the search proxy: datasets (COCO format, synthetic
shapes, VOC conversion), target assignment and losses, the training loop and COCO evaluation.

It sits above the base modules (:mod:`nasfcos.errors`, :mod:`nasfcos.io`,
:mod:`nasfcos.modelfile`) and below ``compiler``/``runtime``/``search`` and the CLI.
"""
