"""The farm module: every node serves, a shared VIP spreads the clients over them.

``machine.FarmMachine`` is pure (events in, plans out); ``driver.FarmModule``
carries the plans out: scripts, farm membership commits, and the farm VIP with
the buckets of the committed table.
"""
from .driver import FarmModule, hash_seed
from .machine import FarmMachine, State, View

__all__ = ["FarmMachine", "FarmModule", "State", "View", "hash_seed"]
