"""Retraining from the ground truth.

- ``training``: fit, evaluate, compare, retrain
"""
