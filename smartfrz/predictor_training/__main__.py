from ..lab.cli import run_cli
from .training import main

run_cli(main)
