"""Evaluation: DAVIS 2017 J, F and J&F metrics, DAVIS/YouTube-VOS runners."""
