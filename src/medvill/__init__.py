"""medvill: MedViLL vision-language pre-training for chest X-rays and radiology reports."""

__version__ = "0.1.0"
