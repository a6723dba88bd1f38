"""Shared pytest settings: deterministic, single-threaded-friendly torch for fast small tests."""
import torch

torch.set_num_threads(2)
