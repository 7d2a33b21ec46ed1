"""Preloaded by a launcher test: stands in for a torch whose CUDA a preloaded module has initialized."""

import sys
import types

fake = types.ModuleType("torch")
fake.cuda = types.SimpleNamespace(is_initialized=lambda: True)
sys.modules["torch"] = fake
