"""Experiments: a YAML file of probes, a hypothesis, a method of faults and halt conditions.

This package holds the file format (:mod:`~dbchaos.experiments.spec`), its condition
grammar (:mod:`~dbchaos.experiments.conditions`) and the position-keeping YAML reader
(:mod:`~dbchaos.experiments.source`). See ``docs/experiments.md``.
"""

from dbchaos.experiments.conditions import Condition, ConditionError, parse_condition
from dbchaos.experiments.spec import (
    Experiment,
    ExperimentFileError,
    FaultStep,
    HaltCondition,
    ProbeSpec,
    Problem,
    TargetRef,
    Tolerance,
    parse_experiment,
    validate_experiment,
)

__all__ = [
    "Condition",
    "ConditionError",
    "Experiment",
    "ExperimentFileError",
    "FaultStep",
    "HaltCondition",
    "ProbeSpec",
    "Problem",
    "TargetRef",
    "Tolerance",
    "parse_condition",
    "parse_experiment",
    "validate_experiment",
]
