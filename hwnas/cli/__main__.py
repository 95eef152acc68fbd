"""`python -m hwnas.cli` (and `torchrun ... -m hwnas.cli train ...`)."""

from hwnas.cli import main

main()
