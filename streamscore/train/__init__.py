"""Retraining from the ground truth.

- ``training``: fit, evaluate, compare, retrain
- ``synthetic``: the demo's synthetic world
"""
