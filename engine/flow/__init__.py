"""Flows: the YAML a team writes, validated whole at load time, compiled into an immutable graph.

- :mod:`engine.flow.yaml_lines`: YAML reading that keeps line numbers (for ``file:line`` errors);
- :mod:`engine.flow.problems`: the one collector and YAML-file reader behind every
  ``file:line: field: message`` report (flows, personas, experiments, calibration pairs);
- :mod:`engine.flow.schema`: the pydantic models of flow.yaml, intents.yaml and scripts.yaml;
- :mod:`engine.flow.generation`: LLM generation parameters as a flow declares them;
- :mod:`engine.flow.loader`: reads a flow folder, checks it whole, builds the model;
- :mod:`engine.flow.model`: the compiled flow every conversation of that flow shares;
- :mod:`engine.flow.classifier`: the flow's intent classifier, trained with its settings.
"""

from engine.flow.loader import load_flow
from engine.flow.model import Flow, Script, Stage

__all__ = ["Flow", "Script", "Stage", "load_flow"]
