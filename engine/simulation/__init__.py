"""Offline A/B simulation: agenda-based simulated customers run through the real Engine."""

from engine.simulation.customer import SimulatedCustomer, Utterance
from engine.simulation.design import Arm, SimulationError, adhoc_experiment, choose, parse_arms
from engine.simulation.personas import Population, load_population
from engine.simulation.runner import RunResult, Simulation

__all__ = [
    "Arm",
    "Population",
    "RunResult",
    "SimulatedCustomer",
    "Simulation",
    "SimulationError",
    "Utterance",
    "adhoc_experiment",
    "choose",
    "load_population",
    "parse_arms",
]
