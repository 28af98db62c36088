"""The runner's Hydra launchers (launchers.py); Hydra finds launchers only under hydra_plugins."""
