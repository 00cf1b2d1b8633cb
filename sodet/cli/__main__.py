"""``python -m sodet.cli``: what a study starts for each of its cells."""

from sodet.cli import main

main()
