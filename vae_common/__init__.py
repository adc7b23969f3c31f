"""Pieces both the service and training use: the pixel convention, scoring, checkpoint loading.

Imports torch, numpy and Pillow only; never the training code.
"""
