"""``python -m deeplab_edge.cli``: the command line (e.g. under ``torchrun -m deeplab_edge.cli train ...``)."""

from . import main

main()
