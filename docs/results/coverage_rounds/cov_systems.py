"""NH3 and ethanol as built in, but with 10 % of the initial data held out for each round's calibration."""
from dataclasses import replace

from advsample.systems import get_system


def ammonia():
    return replace(get_system("ammonia"), validation_fraction=0.1)


def ethanol():
    return get_system("ethanol", validation_fraction=0.1)
