"""Measuring label quality: the evaluation set's ground truth, the measures, synthetic label families, the harness
behind ``make eval``."""
