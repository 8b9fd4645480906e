"""Kept for code written against medvill 0.1: the image-report pairs now live in
:mod:`medvill.data.pairs` (``PretrainDataset`` is :class:`~medvill.data.pairs.ReportPairDataset`,
``PretrainCollator`` is :class:`~medvill.data.pairs.ReportPairCollator`)."""

from __future__ import annotations

from .pairs import IGNORE_INDEX, LengthGroupedSampler, MLMSpec, blank_reports, encode_reports, mask_tokens, pad_stack
from .pairs import ReportPairCollator as PretrainCollator
from .pairs import ReportPairDataset as PretrainDataset

__all__ = ["IGNORE_INDEX", "LengthGroupedSampler", "MLMSpec", "PretrainCollator", "PretrainDataset", "blank_reports",
           "encode_reports", "mask_tokens", "pad_stack"]
