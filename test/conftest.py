"""Test-wide settings: never touch the network, keep torch on a couple of threads."""

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
