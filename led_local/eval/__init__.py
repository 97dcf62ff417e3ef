"""The pass@k evaluator: datasets, answer extraction and judging, the resumable sample runner, reports."""
