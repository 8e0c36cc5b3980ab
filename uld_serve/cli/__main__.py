"""`python -m uld_serve.cli`, e.g. under `accelerate launch -m uld_serve.cli train-assistant ...`."""
from . import main

main()
