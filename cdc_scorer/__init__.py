"""cdc-scorer: score MySQL/Aurora row changes with SageMaker and Comprehend as they happen."""

__version__ = "0.1.0"
