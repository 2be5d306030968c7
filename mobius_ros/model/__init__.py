"""MOBIUS in PyTorch, one concept per module (see mobius.py for the composition).

Deliberately import-free: `mobius_ros.model.pruning` must import without torch (the Jetson
runtime uses it), so nothing here pulls in torch. Import from the submodules:
`mobius_ros.model.variants.build_model`, `mobius_ros.model.checkpoint.load_checkpoint`, ...
"""
